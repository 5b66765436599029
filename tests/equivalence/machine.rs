//! The state-machine tests: random op sequences from [`Model`] run on a [`Pair`] of stores.

use crate::model::Model;
use crate::ops::Op;
use crate::pair::Pair;
use kvstore::BackendKind;
use proptest::test_runner::{Config, FileFailurePersistence};
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use std::marker::PhantomData;

/// The engine store under test.
pub trait EngineBackend: 'static {
    const BACKEND: BackendKind;
}

/// The engine with the CPU backend: what users get.
#[derive(Debug)]
pub struct Cpu;

impl EngineBackend for Cpu {
    const BACKEND: BackendKind = BackendKind::Cpu;
}

/// The engine with the spec's reference kernels: isolates the engine's scheduling.
#[derive(Debug)]
pub struct EngineSpec;

impl EngineBackend for EngineSpec {
    const BACKEND: BackendKind = BackendKind::EngineSpec;
}

/// An engine store over `B` checked against the spec, op by op.
#[derive(Debug)]
pub struct EngineMatchesSpec<B>(PhantomData<B>);

impl<B: EngineBackend> StateMachineTest for EngineMatchesSpec<B> {
    type SystemUnderTest = Pair;
    type Reference = Model;

    fn init_test(model: &Model) -> Pair {
        Pair::new(model.kind, B::BACKEND, model.workers, model.pipelined)
    }

    fn apply(mut pair: Pair, _model: &Model, op: Op) -> Pair {
        pair.apply(&op);
        pair
    }

    fn teardown(mut pair: Pair, _model: <Self::Reference as ReferenceStateMachine>::State) {
        pair.finish();
    }
}

/// 1000 cases by default (`PROPTEST_CASES` overrides); failures are saved beside this file.
fn config() -> Config {
    Config {
        cases: crate::cases(crate::MACHINE_CASES),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..Config::default()
    }
}

prop_state_machine! {
    #![proptest_config(config())]

    #[test]
    fn r61_engine_cpu_matches_spec_on_random_op_sequences(
        sequential 1..100 => EngineMatchesSpec<Cpu>
    );

    #[test]
    fn r61_engine_with_spec_kernels_matches_spec_on_random_op_sequences(
        sequential 1..100 => EngineMatchesSpec<EngineSpec>
    );
}
