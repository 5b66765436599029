//! The public API: normalisation (R9-R11), handles and copies (R12, R20), and the single-process
//! facts (R5, R24) that only the API shows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kvstore::{
    create, normalize, DType, Device, Error, Item, Key, KeyType, Keys, KvStore, NdArray,
    PullOptions, RowSparse, Tensor, Values,
};
use proptest::prelude::*;

fn t(shape: &[usize], x: f32) -> Tensor {
    Tensor::full(shape.to_vec(), DType::F32, f64::from(x)).unwrap()
}

fn out(shape: &[usize]) -> NdArray {
    NdArray::zeros(shape.to_vec(), DType::F32).unwrap()
}

fn local() -> KvStore {
    create("local").unwrap()
}

#[test]
fn r5_single_process_rank_workers_barrier_and_commands() {
    let kv = create("device").unwrap();
    assert_eq!((kv.rank(), kv.num_workers()), (0, 1));
    kv.barrier().unwrap();
    kv.send_command_to_servers(4, "1,0.500000").unwrap();
    kv.wait_all().unwrap();
    assert_eq!(kv.is_capable("optimizer"), Ok(true));
}

#[test]
fn r2_distributed_kinds_are_refused_here_and_pointed_to_the_mpi_job() {
    for kind in [
        "dist_sync",
        "dist_async",
        "dist_device_sync",
        "dist_sync_allreduce",
    ] {
        let Err(Error::UnsupportedKind { reason, .. }) = create(kind) else {
            panic!("{kind} was not refused");
        };
        assert!(reason.contains("kvstore_mpi::job::launch"), "{reason}");
    }
}

#[test]
fn r10_one_key_one_value() {
    let kv = local();
    kv.init(3, t(&[2], 1.0)).unwrap();
    let o = out(&[2]);
    kv.pull(3, &o).unwrap();
    assert_eq!(o.to_f32(), vec![1.0, 1.0]);
}

#[test]
fn r10_one_key_several_devices() {
    let kv = local();
    kv.init("w", t(&[2], 0.0)).unwrap();
    kv.push(
        "w",
        vec![
            t(&[2], 1.0).on(Device::Cpu(0)),
            t(&[2], 2.0).on(Device::Cpu(1)),
        ],
    )
    .unwrap();
    let outs = [out(&[2]), out(&[2]).on(Device::Cpu(1))];
    kv.pull("w", &outs[..]).unwrap();
    assert!(outs.iter().all(|o| o.to_f32() == vec![3.0, 3.0]));
    assert_eq!(outs[1].device(), Device::Cpu(1));
}

#[test]
fn r10_key_list_with_values_and_groups_mixed() {
    let kv = local();
    kv.init(vec![1, 2], vec![t(&[1], 0.0), t(&[1], 0.0)])
        .unwrap();
    kv.push(
        vec![1, 2],
        vec![
            Item::One(t(&[1], 1.0)),
            Item::Group(vec![t(&[1], 2.0), t(&[1], 3.0)]),
        ],
    )
    .unwrap();
    let (a, b) = (out(&[1]), out(&[1]));
    kv.pull([1, 2], vec![vec![&a], vec![&b]]).unwrap();
    assert_eq!((a.to_f32(), b.to_f32()), (vec![1.0], vec![5.0]));
}

#[test]
fn r10_empty_lists_do_nothing() {
    let kv = local();
    kv.init(Vec::<i32>::new(), Vec::<Tensor>::new()).unwrap();
    kv.push(Vec::<i32>::new(), Vec::<Tensor>::new()).unwrap();
    kv.init("a", t(&[1], 1.0)).unwrap();
}

#[test]
fn r11_bad_argument_shapes_are_typed_errors() {
    let kv = local();
    assert_eq!(
        kv.init(vec![1, 2], vec![t(&[1], 0.0)]),
        Err(Error::LengthMismatch { keys: 2, values: 1 })
    );
    assert_eq!(
        kv.init(vec![1, 2], t(&[2], 0.0)),
        Err(Error::ValuesNotAList { keys: 2 })
    );
    assert_eq!(
        kv.init(1, vec![vec![t(&[1], 0.0)]]),
        Err(Error::NestedValuesForSingleKey { key: Key::Int(1) })
    );
    assert_eq!(
        kv.init(1, Vec::<Tensor>::new()),
        Err(Error::EmptyValueList { key: Key::Int(1) })
    );
    assert_eq!(
        kv.init(vec![1, 2], vec![vec![t(&[1], 0.0)], vec![]]),
        Err(Error::EmptyValueList { key: Key::Int(2) })
    );
    assert_eq!(kv.value_of(1), None, "nothing of a refused call is stored");
}

#[test]
fn r9_int_and_string_keys_in_one_call_are_refused() {
    let kv = local();
    let keys = Keys::List(vec![Key::Int(1), Key::from("a")]);
    assert_eq!(
        kv.init(keys, vec![t(&[1], 0.0), t(&[1], 0.0)]),
        Err(Error::MixedKeyTypes {
            first: KeyType::Int,
            second: KeyType::Str
        })
    );
}

#[test]
fn r12_init_copies_the_caller_array() {
    let kv = local();
    let a = NdArray::new(t(&[2], 1.0));
    kv.init(1, &a).unwrap();
    a.set(t(&[2], 9.0));
    let o = out(&[2]);
    kv.pull(1, &o).unwrap();
    assert_eq!(o.to_f32(), vec![1.0, 1.0]);
}

#[test]
fn r20_push_copies_and_pull_never_writes_into_pushed_arrays() {
    let kv = local();
    kv.init(1, t(&[2], 0.0)).unwrap();
    let g = NdArray::new(t(&[2], 5.0));
    kv.push(1, &g).unwrap();
    g.set(t(&[2], 7.0));
    let o = out(&[2]);
    kv.pull(1, &o).unwrap();
    assert_eq!(
        o.to_f32(),
        vec![5.0, 5.0],
        "MXNet returns 7s here: the slot aliases the gradient"
    );
    assert_eq!(g.to_f32(), vec![7.0, 7.0]);
}

#[test]
fn r24_priority_changes_no_value() {
    let (a, b) = (local(), local());
    for kv in [&a, &b] {
        kv.init(1, t(&[2], 0.0)).unwrap();
    }
    a.push(1, vec![t(&[2], 0.1), t(&[2], 0.2)]).unwrap();
    b.push_with_priority(1, vec![t(&[2], 0.1), t(&[2], 0.2)], -7)
        .unwrap();
    let (oa, ob) = (out(&[2]), out(&[2]));
    a.pull(1, &oa).unwrap();
    b.pull_with(
        1,
        &ob,
        PullOptions {
            priority: 3,
            ..PullOptions::default()
        },
    )
    .unwrap();
    assert_eq!(oa.value(), ob.value());
}

#[test]
fn r7_a_failing_pull_writes_no_output() {
    let kv = local();
    kv.init(1, t(&[2], 4.0)).unwrap();
    let (a, b) = (out(&[2]), out(&[2]));
    assert_eq!(
        kv.pull(vec![1, 2], vec![&a, &b]),
        Err(Error::NotInitialized { key: Key::Int(2) })
    );
    assert_eq!(
        a.to_f32(),
        vec![0.0, 0.0],
        "key 1's output was not written either"
    );
}

#[test]
fn r32_a_bad_row_id_writes_no_output() {
    let kv = local();
    kv.init(
        1,
        RowSparse::new([3, 1], vec![0, 2], vec![1.0f32, 2.0]).unwrap(),
    )
    .unwrap();
    let o = NdArray::row_sparse([3, 1], DType::F32).unwrap();
    assert!(matches!(
        kv.row_sparse_pull(1, &o, vec![0, 3]),
        Err(Error::RowIdOutOfRange { id: 3, .. })
    ));
    assert_eq!(
        o.value(),
        RowSparse::empty([3, 1], DType::F32).unwrap().into()
    );
    kv.row_sparse_pull(1, &o, vec![2, 0, 2]).unwrap();
    assert_eq!(o.to_f32(), vec![1.0, 0.0, 2.0]);
}

#[test]
fn r34_pushpull_in_place_through_the_value_handles() {
    let kv = local();
    kv.init(1, t(&[2], 0.0)).unwrap();
    let g = [NdArray::new(t(&[2], 1.0)), NdArray::new(t(&[2], 2.0))];
    kv.pushpull(1, &g[..], &g[..]).unwrap();
    assert!(g.iter().all(|a| a.to_f32() == vec![3.0, 3.0]));
}

#[test]
fn r47_state_files_round_trip_and_io_errors_are_typed() {
    let kv = local();
    kv.init(1, t(&[1], 0.0)).unwrap();
    kv.set_optimizer(kvstore::Optimizer::Sgd(kvstore::Sgd {
        momentum: 0.9,
        ..kvstore::Sgd::default()
    }))
    .unwrap();
    kv.push(1, t(&[1], 1.0)).unwrap();
    let dir = std::env::temp_dir().join(format!("kvstore-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("states.json");
    kv.save_optimizer_states(&path, true).unwrap();
    kv.load_optimizer_states(&path).unwrap();
    assert!(matches!(
        kv.load_optimizer_states(dir.join("missing.json")),
        Err(Error::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn r47_state_files_are_written_atomically() {
    let kv = local();
    kv.init(1, t(&[3], 0.0)).unwrap();
    kv.set_optimizer(kvstore::Optimizer::Adam(kvstore::Adam::default()))
        .unwrap();
    kv.push(1, t(&[3], 1.0)).unwrap();
    let dir = std::env::temp_dir().join(format!("kvstore-atomic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("states.json");
    kv.save_optimizer_states(&path, false).unwrap();
    let first = std::fs::read(&path).unwrap();
    let listing = || {
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(listing(), ["states.json"], "no temporary file is left");
    // A save that cannot be renamed into place (the target is a directory) fails with a typed
    // error, leaves no temporary file and does not touch what was there.
    let blocked = dir.join("blocked");
    std::fs::create_dir_all(blocked.join("inside")).unwrap();
    kv.push(1, t(&[3], 1.0)).unwrap();
    assert!(matches!(
        kv.save_optimizer_states(&blocked, false),
        Err(Error::Io { .. })
    ));
    assert_eq!(listing(), ["blocked", "states.json"]);
    kv.save_optimizer_states(&path, false).unwrap();
    assert_ne!(std::fs::read(&path).unwrap(), first, "replaced whole");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn kv_store_is_send_and_sync_and_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<KvStore>();
    assert_send_sync::<NdArray>();
    let kv = std::sync::Arc::new(local());
    kv.init(vec![0, 1, 2, 3], vec![t(&[1], 0.0); 4]).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let kv = kv.clone();
            std::thread::spawn(move || {
                for step in 1..=50 {
                    kv.push(i, t(&[1], step as f32)).unwrap();
                    let o = out(&[1]);
                    kv.pull(i, &o).unwrap();
                    assert_eq!(
                        o.to_f32(),
                        vec![step as f32],
                        "R15: per-thread program order on its key"
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// Arguments of any shape the types allow, keys of both kinds.
fn keys() -> impl Strategy<Value = Keys> {
    let key = prop_oneof![(-3i64..3).prop_map(Key::Int), "[ab]".prop_map(Key::Str)];
    prop_oneof![
        key.clone().prop_map(Keys::One),
        prop::collection::vec(key, 0..5).prop_map(Keys::List)
    ]
}

fn values() -> impl Strategy<Value = Values<u8>> {
    let item = prop_oneof![
        any::<u8>().prop_map(Item::One),
        prop::collection::vec(any::<u8>(), 0..3).prop_map(Item::Group)
    ];
    prop_oneof![
        any::<u8>().prop_map(Values::One),
        prop::collection::vec(item, 0..5).prop_map(Values::List)
    ]
}

fn leaves(values: &Values<u8>) -> Vec<u8> {
    match values {
        Values::One(v) => vec![*v],
        Values::List(items) => items
            .iter()
            .flat_map(|i| match i {
                Item::One(v) => vec![*v],
                Item::Group(g) => g.clone(),
            })
            .collect(),
    }
}

proptest! {
    /// R10, R11: normalisation is total: pairs in order, or a normalisation error; never a panic.
    #[test]
    fn r11_prop_normalisation_is_total(keys in keys(), values in values()) {
        let all = leaves(&values);
        match normalize(keys.clone(), values) {
            Ok(pairs) => {
                prop_assert_eq!(pairs.iter().map(|(_, v)| *v).collect::<Vec<_>>(), all);
                if let Some((first, _)) = pairs.first() {
                    prop_assert!(pairs.iter().all(|(k, _)| k.key_type() == first.key_type()));
                }
                if let Keys::One(k) = keys {
                    prop_assert!(pairs.iter().all(|(p, _)| *p == k));
                }
            }
            Err(e) => prop_assert!(matches!(
                e,
                Error::MixedKeyTypes { .. }
                    | Error::LengthMismatch { .. }
                    | Error::ValuesNotAList { .. }
                    | Error::NestedValuesForSingleKey { .. }
                    | Error::EmptyValueList { .. }
            ), "unexpected error {e:?}"),
        }
    }
}
