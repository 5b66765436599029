//! Rules R1-R9, R12-R14: store kinds, key types, init.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use kvstore_spec::kind::{Kind, StoreClass};
use kvstore_spec::store::LocalStore;
use kvstore_spec::{DType, Error, Key, KeyType};

#[test]
fn r1_kind_names_are_lower_cased_and_any_name_is_accepted() {
    assert_eq!(Kind::parse("Local").unwrap().name(), "local");
    assert_eq!(
        Kind::parse("local_allreduce_cpu").unwrap().name(),
        "local_allreduce_cpu"
    );
    let mut kv = store("Foo");
    assert_eq!(kv.kind().name(), "foo");
    kv.init(&[(k(1), full(&[2], 1.0))]).unwrap();
    assert_eq!(pull1(&mut kv, k(1), &[2]), vec![1.0, 1.0]);
}

#[test]
fn r2_class_follows_substrings() {
    let class = |n: &str| Kind::parse(n).unwrap().class();
    assert_eq!(class("local"), StoreClass::Local);
    assert_eq!(class("device"), StoreClass::Local);
    assert_eq!(class("nccl"), StoreClass::Nccl);
    assert_eq!(class("dist_sync"), StoreClass::Dist);
    assert_eq!(class("dist_nccl"), StoreClass::Dist, "dist wins over nccl");
    assert!(Kind::parse("device").unwrap().device_comm());
    assert!(!Kind::parse("local").unwrap().device_comm());
    assert!(Kind::parse("dist_sync").unwrap().is_sync());
    assert!(Kind::parse("dist").unwrap().is_sync());
    assert!(!Kind::parse("dist_async").unwrap().is_sync());
    assert!(Kind::parse("dist_device_sync").unwrap().device_comm());
    assert!(
        !Kind::parse("local").unwrap().is_sync(),
        "only dist kinds run rounds"
    );
    assert!(matches!(
        LocalStore::new(Kind::parse("dist_sync").unwrap()),
        Err(Error::UnsupportedKind { .. })
    ));
}

#[test]
fn r3_compression_allowed_only_for_device_or_dist_names() {
    let allows = |n: &str| Kind::parse(n).unwrap().allows_compression();
    assert!(allows("device"));
    assert!(allows("local_allreduce_device"));
    assert!(allows("dist_sync"));
    assert!(allows("dist_async"));
    assert!(!allows("local"));
    assert!(!allows("nccl"));
    assert!(!allows("nccl_device"));
    let c = kvstore_spec::codec::Compression::from_params([("type", "2bit")]).unwrap();
    let mut kv = store("local");
    assert_eq!(
        kv.set_gradient_compression(c),
        Err(Error::CompressionNotSupported {
            kind: "local".into()
        })
    );
    assert!(store("device").set_gradient_compression(c).is_ok());
}

#[test]
fn r4_only_the_optimizer_capability_is_known() {
    let kind = Kind::parse("local").unwrap();
    assert_eq!(kind.is_capable("optimizer"), Ok(true));
    assert_eq!(
        kind.is_capable("flying"),
        Err(Error::UnknownCapability {
            name: "flying".into()
        })
    );
}

#[test]
fn r6_python_only_stores_are_unsupported() {
    for name in ["teststore", "Horovod", "byteps"] {
        assert!(
            matches!(Kind::parse(name), Err(Error::UnsupportedKind { .. })),
            "{name}"
        );
    }
}

#[test]
fn r8_first_call_with_keys_fixes_the_key_type() {
    let mut kv = store("local");
    kv.init(&[(k(1), full(&[1], 1.0))]).unwrap();
    assert_eq!(
        kv.init(&[(s("a"), full(&[1], 1.0))]),
        Err(Error::KeyTypeMismatch {
            expected: KeyType::Int,
            found: KeyType::Str,
            key: s("a")
        })
    );
    // A failing call fixes nothing (R7): after a failed string pull the store can still
    // become an int store.
    let mut kv = store("local");
    assert!(kv.pull(&[(s("x"), zeros(&[1], DType::F32))], true).is_err());
    kv.init(&[(k(1), full(&[1], 1.0))]).unwrap();
}

#[test]
fn r8_an_empty_call_fixes_nothing() {
    let mut kv = store("local");
    kv.init(&[]).unwrap();
    kv.push(&[]).unwrap();
    kv.init(&[(s("a"), full(&[1], 1.0))]).unwrap();
    assert!(matches!(
        kv.init(&[(k(1), full(&[1], 1.0))]),
        Err(Error::KeyTypeMismatch { .. })
    ));
}

#[test]
fn r8_pull_and_push_fix_the_key_type_too() {
    let mut kv = store("local");
    kv.init(&[(s("a"), full(&[1], 1.0))]).unwrap();
    for result in [
        kv.push(&[(k(1), full(&[1], 1.0))]),
        kv.pull(&[(k(1), zeros(&[1], DType::F32))], true)
            .map(|_| ()),
        kv.row_sparse_pull(&[(k(1), rsp_out(&[1]))], &[vec![0]])
            .map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(Error::KeyTypeMismatch { .. })),
            "{result:?}"
        );
    }
}

#[test]
fn r9_wide_integers_are_out_of_range_keys() {
    assert_eq!(Key::try_from(5u64), Ok(Key::Int(5)));
    assert!(matches!(
        Key::try_from(u64::MAX),
        Err(Error::KeyOutOfRange { .. })
    ));
    assert!(matches!(
        Key::try_from(i128::from(i64::MAX) + 1),
        Err(Error::KeyOutOfRange { .. })
    ));
    assert_eq!(Key::try_from(i128::from(i64::MIN)), Ok(Key::Int(i64::MIN)));
}

#[test]
fn r9_negative_and_extreme_int_keys_work() {
    let mut kv = store("local");
    kv.init(&[
        (k(-7), full(&[1], 1.0)),
        (k(i64::MAX), full(&[1], 2.0)),
        (k(i64::MIN), full(&[1], 3.0)),
    ])
    .unwrap();
    assert_eq!(pull1(&mut kv, k(-7), &[1]), vec![1.0]);
    assert_eq!(pull1(&mut kv, k(i64::MAX), &[1]), vec![2.0]);
    assert_eq!(pull1(&mut kv, k(i64::MIN), &[1]), vec![3.0]);
}

#[test]
fn r12_init_stores_a_copy_with_shape_dtype_and_storage_type() {
    let mut kv = store("local");
    let v = rsp(&[3, 2], &[1], &[5.0, 6.0]);
    kv.init(&[(k(1), v.clone())]).unwrap();
    assert_eq!(kv.value(&k(1)), Some(&v));
    let h = zeros(&[2], DType::F16);
    kv.init(&[(k(2), h.clone())]).unwrap();
    assert_eq!(kv.value(&k(2)).unwrap().dtype(), DType::F16);
}

#[test]
fn r13_duplicate_init_is_an_error_and_stores_nothing() {
    let mut kv = store("local");
    assert_eq!(
        kv.init(&[(k(5), full(&[1], 1.0)), (k(5), full(&[1], 2.0))]),
        Err(Error::DuplicateInit { key: k(5) })
    );
    assert_eq!(
        kv.value(&k(5)),
        None,
        "MXNet keeps the first 5; kvstore keeps nothing"
    );
    kv.init(&[(k(5), full(&[1], 1.0))]).unwrap();
    assert_eq!(
        kv.init(&[(k(5), full(&[1], 2.0))]),
        Err(Error::DuplicateInit { key: k(5) })
    );
    assert_eq!(pull1(&mut kv, k(5), &[1]), vec![1.0]);
    let mut kv = store("local");
    kv.init(&[(s("w"), full(&[1], 1.0))]).unwrap();
    assert_eq!(
        kv.init(&[(s("w"), full(&[1], 1.0))]),
        Err(Error::DuplicateInit { key: s("w") })
    );
}

#[test]
fn r14_unknown_keys_are_errors_without_poisoning() {
    for key in [k(9), s("nine")] {
        let mut kv = store("device");
        let out = zeros(&[2], DType::F32);
        assert_eq!(
            kv.pull(&[(key.clone(), out.clone())], true),
            Err(Error::NotInitialized { key: key.clone() })
        );
        assert_eq!(
            kv.push(&[(key.clone(), full(&[2], 1.0))]),
            Err(Error::NotInitialized { key: key.clone() })
        );
        assert_eq!(
            kv.push(&[
                (key.clone(), full(&[2], 1.0)),
                (key.clone(), full(&[2], 1.0))
            ]),
            Err(Error::NotInitialized { key: key.clone() }),
            "MXNet crashes here on a local store"
        );
        assert_eq!(
            kv.row_sparse_pull(&[(key.clone(), rsp_out(&[2]))], &[vec![0]]),
            Err(Error::NotInitialized { key: key.clone() })
        );
        assert_eq!(
            kv.pushpull(&[(key.clone(), full(&[2], 1.0))], &[(key.clone(), out)]),
            Err(Error::NotInitialized { key: key.clone() })
        );
        kv.init(&[(key.clone(), full(&[2], 4.0))]).unwrap();
        assert_eq!(pull1(&mut kv, key, &[2]), vec![4.0, 4.0]);
    }
}

#[test]
fn r5_single_process_stores_have_rank_0_of_1() {
    let kv = store("device");
    assert_eq!((kv.rank(), kv.num_workers()), (0, 1));
}
