//go:build tools

// Package kube pins the programs of snapstage's local Kubernetes control plane at one release:
// kube-apiserver, kube-controller-manager, kube-scheduler and kubectl (k8s.io/kubernetes), the
// snapshot controller and the CSI sidecars (kubernetes-csi), and KWOK for nodes. etcd is built
// from ./etcd. scripts/localkube.sh builds them into .tools/ and runs them on loopback.
package kube

import (
	_ "github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner"
	_ "github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter"
	_ "github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
