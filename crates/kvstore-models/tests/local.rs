//! The local ordering model (SPEC R61, R62): clients' scripts run through the engine's own
//! admission and ready-queue rules, explored exhaustively. The unmodified engine holds every
//! property; each planted fault is caught by the property it breaks. Unique state counts are
//! pinned, as stateright's own examples do, so that any change to the model or to the engine's
//! rules shows up here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kvstore_models::local::properties::{
    EFFECT_ORDER, NO_DEADLOCK, PULL_VALUE, SPEC, WAIT_ALL, WRITER_ALONE,
};
use kvstore_models::local::{Fault, LocalAction, LocalConfig, LocalModel};
use stateright::{Checker, HasDiscoveries, Model};
use std::collections::BTreeSet;

/// Explores every state of `config`.
fn check(config: LocalConfig) -> impl Checker<LocalModel> {
    config.into_model().checker().threads(2).spawn_bfs().join()
}

/// Explores `config` until each of `properties` has a discovery (or every state is seen).
fn search(config: LocalConfig, properties: &[&'static str]) -> impl Checker<LocalModel> {
    let wanted: BTreeSet<&'static str> = properties.iter().copied().collect();
    config
        .into_model()
        .checker()
        .threads(2)
        .finish_when(HasDiscoveries::AllOf(wanted))
        .spawn_bfs()
        .join()
}

fn assert_found(checker: &impl Checker<LocalModel>, properties: &[&'static str]) {
    for &property in properties {
        assert!(
            checker.discovery(property).is_some(),
            "no counterexample to \"{property}\""
        );
    }
}

#[test]
fn r61_local_model_holds_per_key_order_spec_values_and_wait_all_on_the_ci_scripts() {
    let checker = check(LocalConfig::ci());
    checker.assert_properties();
    assert_eq!(checker.unique_state_count(), 217_657);
}

#[test]
fn priority_overtaking_within_a_key_is_caught_as_out_of_order_effects() {
    let properties = [EFFECT_ORDER, PULL_VALUE, SPEC];
    let config = LocalConfig::ci().with_fault(Fault::PriorityOvertaking);
    assert_found(&search(config, &properties), &properties);
}

#[test]
fn a_lost_wake_up_is_caught_as_a_deadlock() {
    let config = LocalConfig::ci().with_fault(Fault::LostWakeup);
    let checker = search(config, &[NO_DEADLOCK]);
    // The shortest story: client 0's push on key 0 completes while both other clients' pulls of
    // key 0 wait; it grants both, one is lost. It holds key 0 (as a reader) and client 2's
    // output forever: client 0's wait_all, client 2's push of key 0 and its pull into that
    // output never proceed.
    use LocalAction::{Complete, Issue, Start};
    checker.assert_discovery(
        NO_DEADLOCK,
        vec![
            Issue(0),
            Issue(1),
            Issue(2),
            Start,
            Complete(0),
            Issue(0),
            Start,
            Complete(3),
            Issue(1),
            Issue(1),
            Start,
            Start,
            Complete(4),
            Complete(5),
            Issue(2),
            Issue(2),
        ],
    );
}

#[test]
fn readers_beside_a_writer_are_caught() {
    let properties = [WRITER_ALONE, PULL_VALUE, EFFECT_ORDER];
    let config = LocalConfig::ci().with_fault(Fault::ReaderBesideWriter);
    assert_found(&search(config, &properties), &properties);
}

#[test]
fn an_early_wait_all_is_caught() {
    let config = LocalConfig::ci().with_fault(Fault::EarlyWaitAll);
    assert_found(&search(config, &[WAIT_ALL]), &[WAIT_ALL]);
}

#[test]
fn every_fault_breaks_the_property_it_names_and_round_trips_its_name() {
    for fault in Fault::ALL {
        assert_eq!(Fault::from_name(fault.name()), Some(fault));
        let config = LocalConfig::ci().with_fault(fault);
        assert_found(&search(config, &[fault.breaks()]), &[fault.breaks()]);
    }
}

#[test]
fn the_properties_are_named_once_each() {
    let model = LocalConfig::ci().into_model();
    let names: Vec<_> = model.properties().iter().map(|p| p.name).collect();
    let unique: BTreeSet<_> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "{names:?}");
}

/// Minutes in the test profile: run with
/// `cargo test --release -p kvstore-models --test local -- --ignored`.
#[test]
#[ignore]
fn the_large_configuration_holds_every_property() {
    let checker = check(LocalConfig::large());
    checker.assert_properties();
    assert_eq!(checker.unique_state_count(), 5_026_798);
}
