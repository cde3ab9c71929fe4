//! Unit tests of the EBS backend: client tokens, group exclusions, state mapping.

use super::client::client_token;
use super::group::{exclusions, placement};
use super::model::snapshot_info;
use crate::job::contract::Execution;
use crate::storage::SnapshotState;

#[test]
fn client_token_is_stable_per_run_and_snapshot() {
    let ex = |k: &str| Execution {
        key: k.into(),
        origin: "direct".into(),
        pipeline: None,
        commit: None,
    };
    let a = client_token(&ex("run-1"), "snap-1");
    assert_eq!(a, client_token(&ex("run-1"), "snap-1"));
    assert_ne!(a, client_token(&ex("run-2"), "snap-1"));
    assert_ne!(a, client_token(&ex("run-1"), "snap-2"));
    assert!(a.len() <= 64 && a.is_ascii());
}

#[test]
fn a_group_call_excludes_every_volume_not_named_the_boot_volume_too() {
    use aws_sdk_ec2::types::{EbsInstanceBlockDevice, Instance, InstanceBlockDeviceMapping};
    let mapping = |dev: &str, vol: &str| {
        InstanceBlockDeviceMapping::builder()
            .device_name(dev)
            .ebs(EbsInstanceBlockDevice::builder().volume_id(vol).build())
            .build()
    };
    let instance = Instance::builder()
        .instance_id("i-1")
        .root_device_name("/dev/xvda")
        .block_device_mappings(mapping("/dev/xvda", "vol-boot"))
        .block_device_mappings(mapping("/dev/sdf", "vol-a"))
        .block_device_mappings(mapping("/dev/sdg", "vol-b"))
        .block_device_mappings(mapping("/dev/sdh", "vol-c"))
        .build();
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        exclusions(&instance, "i-1", &names(&["vol-a", "vol-b"])).unwrap(),
        (true, names(&["vol-c"]))
    );
    // The boot volume is snapshotted only when named (and never listed as a data volume).
    assert_eq!(
        exclusions(&instance, "i-1", &names(&["vol-boot", "vol-c"])).unwrap(),
        (false, names(&["vol-a", "vol-b"]))
    );
    let e = exclusions(&instance, "i-1", &names(&["vol-a", "vol-x"])).unwrap_err();
    assert!(
        e.to_string()
            .contains("vol-x is no longer attached to instance i-1"),
        "{e}"
    );
}

#[test]
fn placement_names_each_volume_and_where_it_is() {
    let p = placement(&[
        ("vol-a".into(), vec!["i-1".into()]),
        ("vol-b".into(), vec!["i-2".into()]),
        ("vol-c".into(), vec![]),
    ]);
    assert_eq!(
        p,
        "vol-a is on instance i-1, vol-b is on instance i-2, vol-c is not attached to an instance"
    );
}

#[test]
fn snapshot_states_map_with_progress() {
    use aws_sdk_ec2::types::{Snapshot, SnapshotState as S};
    let s = Snapshot::builder()
        .snapshot_id("snap-1")
        .volume_id("vol-1")
        .state(S::Pending)
        .progress("42%")
        .build();
    assert_eq!(
        snapshot_info(&s).unwrap().state,
        SnapshotState::Pending { percent: 42 }
    );
    let s = Snapshot::builder()
        .snapshot_id("snap-1")
        .state(S::Error)
        .state_message("KMS key disabled")
        .build();
    match snapshot_info(&s).unwrap().state {
        SnapshotState::Failed(m) => assert!(m.contains("KMS key disabled")),
        other => panic!("{other:?}"),
    }
}
