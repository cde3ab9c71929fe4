//! What the listings (and, when they cannot tell, a HeadObject) say about one source object, the
//! Nexus-safe copy order, and the arithmetic of multipart ETags.

use std::collections::HashMap;

use aws_sdk_s3::types::ServerSideEncryption;
use md5::Digest as _;

use super::{SHA256_METADATA, SOURCE_ETAG_METADATA};

/// One object as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    /// Without quotes, lower case.
    pub etag: String,
}

/// An ETag without quotes or weak marker, lower case.
pub fn normalize_etag(etag: &str) -> String {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_ascii_lowercase()
}

/// A single-part upload's ETag (the MD5 of the content, for unencrypted and SSE-S3 objects);
/// multipart ETags end with `-<parts>`.
pub fn is_single_part(etag: &str) -> bool {
    !etag.is_empty() && !etag.contains('-')
}

/// The part count of a multipart ETag (`<md5 of the part MD5s>-<parts>`).
pub fn multipart_parts(etag: &str) -> Option<u64> {
    let (md5, n) = etag.rsplit_once('-')?;
    let n = n.parse::<u64>().ok().filter(|n| *n >= 1)?;
    (md5.len() == 32 && md5.chars().all(|c| c.is_ascii_hexdigit())).then_some(n)
}

/// The ETag S3 gives a multipart upload of these parts: the MD5 of the concatenated part MD5s,
/// a dash, the part count.
pub fn multipart_etag(part_md5s: &[[u8; 16]]) -> String {
    let mut h = md5::Md5::new();
    for m in part_md5s {
        h.update(m);
    }
    format!("{}-{}", hex::encode(h.finalize()), part_md5s.len())
}

/// Whether an object's ETag is the MD5 of its content: not with SSE-KMS or SSE-C.
pub fn etag_is_md5(sse: Option<&ServerSideEncryption>, sse_customer: Option<&str>) -> bool {
    sse_customer.is_none()
        && !matches!(
            sse,
            Some(ServerSideEncryption::AwsKms | ServerSideEncryption::AwsKmsDsse)
        )
}

/// How an object is cut into parts: `part_size` bytes each, the last one shorter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub size: u64,
    pub part_size: u64,
}

impl Layout {
    pub fn parts(&self) -> u64 {
        if self.size == 0 {
            1
        } else {
            self.size.div_ceil(self.part_size.max(1))
        }
    }
    /// The byte range `[start, end)` of part `n` (1-based).
    pub fn range(&self, n: u64) -> (u64, u64) {
        let start = (n - 1) * self.part_size;
        (start, (start + self.part_size).min(self.size))
    }
}

/// The layout to write a source object with. A multipart source whose part size is known and
/// fits the memory budget (`max_part`) is copied with the same parts, so the destination's ETag
/// equals the source's and the next listing proves it unchanged without a HeadObject.
pub fn choose_layout(size: u64, source_part_size: Option<u64>, part_size: u64) -> Layout {
    match source_part_size {
        Some(p) if p > 0 && p <= part_size => Layout { size, part_size: p },
        _ => Layout { size, part_size },
    }
}

/// Whether `source_part_size` (from HeadObject `partNumber=1`) explains a multipart ETag.
pub fn layout_matches(size: u64, etag: &str, source_part_size: u64) -> bool {
    multipart_parts(etag).is_some_and(|n| {
        source_part_size > 0
            && Layout {
                size,
                part_size: source_part_size,
            }
            .parts()
                == n
    })
}

/// What the two listings say about one source object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListingVerdict {
    /// Not at the destination.
    New,
    /// A different size at the destination.
    Changed,
    /// Same size and the same ETag (single-part: the same MD5; multipart: the same parts).
    Unchanged,
    /// Same size, ETags not comparable or different: the destination's metadata decides.
    NeedsHead,
}

pub fn compare_listing(source: &Listed, destination: Option<&Listed>) -> ListingVerdict {
    match destination {
        None => ListingVerdict::New,
        Some(d) if d.size != source.size => ListingVerdict::Changed,
        Some(d) if is_single_part(&source.etag) && source.etag == d.etag => {
            ListingVerdict::Unchanged
        }
        // md5-of-part-md5s with the same part count: the same parts, in the same order.
        Some(d) if multipart_parts(&source.etag).is_some() && source.etag == d.etag => {
            ListingVerdict::Unchanged
        }
        Some(_) => ListingVerdict::NeedsHead,
    }
}

/// What the destination's HeadObject says, when the listing could not decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadVerdict {
    Unchanged,
    /// Copy; when the destination carries a SHA-256, the write is skipped if the source's matches.
    Copy {
        destination_sha256: Option<String>,
    },
}

/// The destination object as HeadObject reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationHead {
    pub size: u64,
    pub etag: String,
    /// False for SSE-KMS / SSE-C: the ETag is not an MD5.
    pub etag_is_md5: bool,
    pub metadata: HashMap<String, String>,
}

pub fn meta<'a>(metadata: &'a HashMap<String, String>, k: &str) -> Option<&'a str> {
    metadata
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(k))
        .map(|(_, v)| v.trim())
}

pub fn compare_head(source: &Listed, d: &DestinationHead) -> HeadVerdict {
    let copy = HeadVerdict::Copy {
        destination_sha256: None,
    };
    if d.size != source.size {
        return copy;
    }
    // Both plain MD5s: they decide, whatever the metadata claims. (Equal ones reach here when
    // a listing left the ETags out: s3s-fs and some other S3-compatible stores.)
    if d.etag_is_md5 && is_single_part(&source.etag) && is_single_part(&d.etag) {
        return if d.etag == source.etag {
            HeadVerdict::Unchanged
        } else {
            copy
        };
    }
    if meta(&d.metadata, SOURCE_ETAG_METADATA).is_some_and(|e| normalize_etag(e) == source.etag) {
        return HeadVerdict::Unchanged;
    }
    let destination_sha256 = meta(&d.metadata, SHA256_METADATA)
        .filter(|s| s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase);
    HeadVerdict::Copy { destination_sha256 }
}

/// The rank of a key in the Nexus-safe order: `.bytes` (and anything else) 0, `.properties` 1,
/// a blob store's `metadata.properties` 2.
pub fn rank(key: &str) -> u8 {
    let name = key.rsplit('/').next().unwrap_or(key);
    if name == "metadata.properties" {
        2
    } else if name.ends_with(".properties") {
        1
    } else {
        0
    }
}

/// The copy order of a key: rank, then key. Nexus never sees a `.properties` whose `.bytes` is
/// missing; deletions run in the reverse order.
pub fn copy_order(key: &str) -> (u8, &str) {
    (rank(key), key)
}

/// The `.bytes` a `.properties` describes (`a/b.properties` → `a/b.bytes`).
pub fn bytes_of(properties_key: &str) -> Option<String> {
    properties_key
        .strip_suffix(".properties")
        .map(|stem| format!("{stem}.bytes"))
}

/// The destination key of a source key.
pub fn destination_key(source_key: &str, source_prefix: &str, destination_prefix: &str) -> String {
    let rest = source_key.strip_prefix(source_prefix).unwrap_or(source_key);
    format!("{destination_prefix}{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(key: &str, size: u64, etag: &str) -> Listed {
        Listed {
            key: key.into(),
            size,
            etag: normalize_etag(etag),
        }
    }

    #[test]
    fn nexus_blob_stores_are_copied_bytes_first_metadata_last() {
        let mut keys = vec![
            "metadata.properties",
            "content/vol-01/chap-02/b.properties",
            "content/vol-01/chap-02/b.bytes",
            "content/vol-01/chap-01/a.properties",
            "content/vol-01/chap-01/a.bytes",
            "content/directpath/x.bytes",
            "other/readme.txt",
        ];
        keys.sort_by(|a, b| copy_order(a).cmp(&copy_order(b)));
        assert_eq!(
            keys,
            [
                "content/directpath/x.bytes",
                "content/vol-01/chap-01/a.bytes",
                "content/vol-01/chap-02/b.bytes",
                "other/readme.txt",
                "content/vol-01/chap-01/a.properties",
                "content/vol-01/chap-02/b.properties",
                "metadata.properties",
            ]
        );
        assert_eq!(rank("nexus/blobs/metadata.properties"), 2);
        assert_eq!(
            bytes_of("content/vol-01/a.properties").as_deref(),
            Some("content/vol-01/a.bytes")
        );
        assert_eq!(bytes_of("a.bytes"), None);
    }

    #[test]
    fn listings_compare_by_size_and_etags() {
        let s = listed("k", 10, "\"0cc175b9c0f1b6a831c399e269772661\"");
        assert_eq!(compare_listing(&s, None), ListingVerdict::New);
        assert_eq!(
            compare_listing(
                &s,
                Some(&listed("k", 11, "\"0cc175b9c0f1b6a831c399e269772661\""))
            ),
            ListingVerdict::Changed
        );
        assert_eq!(
            compare_listing(
                &s,
                Some(&listed("k", 10, "\"0CC175B9C0F1B6A831C399E269772661\""))
            ),
            ListingVerdict::Unchanged
        );
        assert_eq!(
            compare_listing(
                &s,
                Some(&listed("k", 10, "\"92eb5ffee6ae2fec3ad71c777531578f\""))
            ),
            ListingVerdict::NeedsHead
        );
        // Multipart with the same parts: the same md5-of-part-md5s.
        let mp = listed("k", 10, "\"d41d8cd98f00b204e9800998ecf8427e-2\"");
        assert_eq!(
            compare_listing(
                &mp,
                Some(&listed("k", 10, "\"d41d8cd98f00b204e9800998ecf8427e-2\""))
            ),
            ListingVerdict::Unchanged
        );
        assert_eq!(
            compare_listing(
                &mp,
                Some(&listed("k", 10, "\"0cc175b9c0f1b6a831c399e269772661\""))
            ),
            ListingVerdict::NeedsHead
        );
        // Not a well-formed multipart ETag: never trusted.
        let odd = listed("k", 10, "\"abc-2\"");
        assert_eq!(
            compare_listing(&odd, Some(&listed("k", 10, "\"abc-2\""))),
            ListingVerdict::NeedsHead
        );
        assert!(!is_single_part(""));
    }

    #[test]
    fn multipart_etags_are_the_md5_of_the_part_md5s() {
        // Two parts "a" and "b": md5(md5("a") || md5("b")) - 2, as S3 computes it.
        let a: [u8; 16] = md5::Md5::digest(b"a").into();
        let b: [u8; 16] = md5::Md5::digest(b"b").into();
        let mut cat = a.to_vec();
        cat.extend_from_slice(&b);
        assert_eq!(
            multipart_etag(&[a, b]),
            format!("{}-2", hex::encode(md5::Md5::digest(&cat)))
        );
        assert_eq!(
            multipart_parts("d41d8cd98f00b204e9800998ecf8427e-12"),
            Some(12)
        );
        assert_eq!(multipart_parts("d41d8cd98f00b204e9800998ecf8427e"), None);
        assert_eq!(multipart_parts("zz-2"), None);
    }

    #[test]
    fn layouts_follow_the_source_parts_within_the_memory_budget() {
        let mib = 1024 * 1024;
        let l = choose_layout(23 * mib, Some(5 * mib), 16 * mib);
        assert_eq!((l.part_size, l.parts()), (5 * mib, 5));
        assert_eq!(l.range(5), (20 * mib, 23 * mib));
        // A source part larger than the budget: our own parts.
        let l = choose_layout(200 * mib, Some(100 * mib), 16 * mib);
        assert_eq!((l.part_size, l.parts()), (16 * mib, 13));
        assert_eq!(choose_layout(0, None, 16).parts(), 1);
        assert!(layout_matches(
            23 * mib,
            "d41d8cd98f00b204e9800998ecf8427e-5",
            5 * mib
        ));
        assert!(!layout_matches(
            23 * mib,
            "d41d8cd98f00b204e9800998ecf8427e-4",
            5 * mib
        ));
    }

    #[test]
    fn destination_metadata_decides_what_listings_cannot() {
        let mp = listed("k", 10, "\"d41d8cd98f00b204e9800998ecf8427e-2\"");
        let head = |size, etag: &str, pairs: &[(&str, &str)]| DestinationHead {
            size,
            etag: etag.into(),
            etag_is_md5: true,
            metadata: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let our_etag = "11111111111111111111111111111111-3";
        assert_eq!(
            compare_head(
                &mp,
                &head(
                    10,
                    our_etag,
                    &[(SOURCE_ETAG_METADATA, "d41d8cd98f00b204e9800998ecf8427e-2")]
                )
            ),
            HeadVerdict::Unchanged
        );
        let sha = "a".repeat(64);
        assert_eq!(
            compare_head(
                &mp,
                &head(
                    10,
                    our_etag,
                    &[
                        (SOURCE_ETAG_METADATA, "ffff-2"),
                        ("Snapstage-Sha256", &sha.to_uppercase())
                    ]
                )
            ),
            HeadVerdict::Copy {
                destination_sha256: Some(sha.clone())
            }
        );
        assert_eq!(
            compare_head(
                &mp,
                &head(10, our_etag, &[(SHA256_METADATA, "not-a-digest")])
            ),
            HeadVerdict::Copy {
                destination_sha256: None
            }
        );
        assert_eq!(
            compare_head(
                &mp,
                &head(
                    11,
                    our_etag,
                    &[(SOURCE_ETAG_METADATA, "d41d8cd98f00b204e9800998ecf8427e-2")]
                )
            ),
            HeadVerdict::Copy {
                destination_sha256: None
            }
        );
        // A single-part source and a plain-MD5 destination that differ: metadata cannot vouch.
        let s = listed("k", 10, "0cc175b9c0f1b6a831c399e269772661");
        let lying = head(
            10,
            "92eb5ffee6ae2fec3ad71c777531578f",
            &[(SOURCE_ETAG_METADATA, "0cc175b9c0f1b6a831c399e269772661")],
        );
        assert!(matches!(compare_head(&s, &lying), HeadVerdict::Copy { .. }));
        // The same MD5 on both sides (a listing without ETags sent us here): unchanged, with or
        // without our metadata.
        let same = head(10, "0cc175b9c0f1b6a831c399e269772661", &[]);
        assert_eq!(compare_head(&s, &same), HeadVerdict::Unchanged);
        // ... unless the destination encrypts (its ETag is not an MD5).
        let encrypted = DestinationHead {
            etag_is_md5: false,
            ..lying
        };
        assert_eq!(compare_head(&s, &encrypted), HeadVerdict::Unchanged);
    }

    #[test]
    fn keys_map_from_the_source_prefix_to_the_destination_prefix() {
        assert_eq!(
            destination_key("nexus/blobs/content/a.bytes", "nexus/blobs/", "backup/"),
            "backup/content/a.bytes"
        );
        assert_eq!(destination_key("a.bytes", "", "x/"), "x/a.bytes");
        assert_eq!(destination_key("nexus/a", "nexus/", "nexus/"), "nexus/a");
    }

    #[test]
    fn etags_normalize_and_encryption_makes_them_opaque() {
        assert_eq!(normalize_etag("W/\"ABC\""), "abc");
        assert!(etag_is_md5(None, None));
        assert!(etag_is_md5(Some(&ServerSideEncryption::Aes256), None));
        assert!(!etag_is_md5(Some(&ServerSideEncryption::AwsKms), None));
        assert!(!etag_is_md5(None, Some("AES256")));
    }
}
