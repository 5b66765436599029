//! The model's transitions: clients issue their calls, a free worker takes the ready queue's
//! head, any running op completes. Admission and ready order are the engine's own
//! ([`kvstore_engine::rules`]); planted faults change what the model does around them.

use stateright::{Model, Property};

use super::config::{LocalConfig, Step};
use super::fault::Fault;
use super::properties;
use super::state::{LocalState, OpId, OpState, Phase};

/// A step of the model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LocalAction {
    /// The client makes its next call (a wait_all blocks it).
    Issue(usize),
    /// The client's wait_all returns.
    Return(usize),
    /// A free worker takes the head of the ready queue.
    Start,
    /// A running op completes: it takes effect and releases its vars.
    Complete(OpId),
}

/// One op of the scripts, with what the engine sees of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpInfo {
    /// The client that calls it.
    pub client: usize,
    /// The call.
    pub step: Step,
    /// The engine priority (0 for wait_all).
    pub priority: i32,
    /// Its vars, with whether it writes them: the key (written by a push, read by a pull), and
    /// a pull's output (written). Keys are vars `0..keys`, output `o` is var `keys + o`.
    pub vars: Vec<(usize, bool)>,
    /// A push: the id of the value it pushes, unique (0 is the keys' initial value).
    pub value: u8,
}

impl OpInfo {
    /// The key it reads or writes (none for wait_all).
    pub fn key(&self) -> Option<usize> {
        match self.step {
            Step::Push { key, .. } | Step::Pull { key, .. } | Step::RowSparsePull { key, .. } => {
                Some(key)
            }
            Step::WaitAll => None,
        }
    }

    /// Whether it is a wait_all (no engine op: it blocks its client).
    pub fn is_wait_all(&self) -> bool {
        self.step == Step::WaitAll
    }

    /// Whether it is a pull or a row_sparse_pull.
    pub fn is_pull(&self) -> bool {
        matches!(self.step, Step::Pull { .. } | Step::RowSparsePull { .. })
    }

    /// Whether it writes `var`.
    pub fn writes(&self, var: usize) -> bool {
        self.vars.iter().any(|&(v, write)| v == var && write)
    }
}

/// The local ordering model; build it with [`LocalConfig::into_model`]. Ops are numbered in a
/// `u8` ([`OpId`]): a configuration has at most 255 calls in all.
#[derive(Debug, Clone)]
pub struct LocalModel {
    config: LocalConfig,
    /// Every call of every script, client by client.
    ops: Vec<OpInfo>,
    /// Per client, its ops in script order.
    scripts: Vec<Vec<OpId>>,
    /// The number of vars: keys, then outputs.
    vars: usize,
}

impl LocalModel {
    pub(crate) fn new(config: LocalConfig) -> Self {
        let outputs = config
            .clients
            .iter()
            .flatten()
            .filter_map(|step| match step {
                Step::Pull { out, .. } | Step::RowSparsePull { out, .. } => Some(out + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let mut ops = Vec::new();
        let mut scripts = Vec::new();
        for (client, script) in config.clients.iter().enumerate() {
            let mut ids = Vec::new();
            for step in script {
                ids.push(ops.len() as OpId);
                let value = ops.len() as u8 + 1;
                ops.push(op_info(client, step.clone(), config.keys, value));
            }
            scripts.push(ids);
        }
        LocalModel {
            vars: config.keys + outputs,
            config,
            ops,
            scripts,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LocalConfig {
        &self.config
    }

    /// Every op of the scripts; an [`OpId`] indexes this.
    pub fn ops(&self) -> &[OpInfo] {
        &self.ops
    }

    /// The op `id`.
    pub fn op(&self, id: OpId) -> &OpInfo {
        &self.ops[usize::from(id)]
    }

    /// Whether a worker is free to take a ready op.
    pub fn worker_free(&self, state: &LocalState) -> bool {
        state.running() < self.config.workers
    }

    fn has(&self, fault: Fault) -> bool {
        self.config.faults.contains(&fault)
    }

    /// Whether the client has made every call and is not blocked.
    pub fn client_finished(&self, state: &LocalState, client: usize) -> bool {
        usize::from(state.pc[client]) == self.scripts[client].len() && !self.blocked(state, client)
    }

    /// Whether every client has finished and every op has completed: the end of a run.
    pub fn is_final(&self, state: &LocalState) -> bool {
        (0..self.scripts.len()).all(|client| self.client_finished(state, client))
            && state.ops.iter().all(|op| op.phase == Phase::Done)
    }

    /// The client's pending wait_all, when it is blocked in one.
    fn blocked_in(&self, state: &LocalState, client: usize) -> Option<OpId> {
        let last = usize::from(state.pc[client]).checked_sub(1)?;
        let id = *self.scripts[client].get(last)?;
        (self.op(id).is_wait_all() && state.op(id).phase == Phase::Waiting).then_some(id)
    }

    fn blocked(&self, state: &LocalState, client: usize) -> bool {
        self.blocked_in(state, client).is_some()
    }

    /// Whether a wait_all that waits for the ops issued below `bound` may return: they have all
    /// completed (with [`Fault::EarlyWaitAll`]: started).
    fn may_return(&self, state: &LocalState, bound: u8) -> bool {
        let early = self.has(Fault::EarlyWaitAll);
        state.ops.iter().zip(&self.ops).all(|(op, info)| {
            info.is_wait_all()
                || op.phase == Phase::Unissued
                || op.seq >= bound
                || op.phase == Phase::Done
                || (early && op.phase == Phase::Running)
        })
    }

    /// Issues op `id` on each of its vars, in one step as the engine's push does under all of
    /// the op's var locks; it is ready once every var is granted.
    fn issue(&self, state: &mut LocalState, id: OpId) {
        let info = self.op(id);
        let seq = state.next_seq;
        if info.is_wait_all() {
            // wait_all is no engine op: it waits for what is issued below the next seq.
            let op = state.op_mut(id);
            op.seq = seq;
            op.phase = Phase::Waiting;
            return;
        }
        state.next_seq += 1;
        let mut unmet = 0;
        for &(var, write) in &info.vars {
            if !self.enqueue(state, id, var, write) {
                unmet += 1;
            }
        }
        if let Some(key) = info.key() {
            if let Step::Push { .. } = info.step {
                state.last_issued[key] = info.value;
            } else {
                state.op_mut(id).expected = state.last_issued[key];
            }
        }
        let op = state.op_mut(id);
        op.seq = seq;
        op.unmet = unmet;
        op.phase = Phase::Waiting;
        if unmet == 0 {
            self.make_ready(state, id);
        }
    }

    /// The engine's `Admission::enqueue`, or a planted variant of it.
    fn enqueue(&self, state: &mut LocalState, id: OpId, var: usize, write: bool) -> bool {
        let priority = self.op(id).priority;
        let admission = &mut state.vars[var];
        let overtakes = self.has(Fault::PriorityOvertaking)
            && admission.waiting_len() > 0
            && admission.admits(write)
            && admission
                .waiting()
                .all(|(&waiting, _)| self.op(waiting).priority < priority);
        // The buggy fast path only checks that nobody waits, not who holds the var.
        let beside_writer =
            self.has(Fault::ReaderBesideWriter) && !write && admission.waiting_len() == 0;
        if overtakes || beside_writer {
            admission.hold(write);
            return true;
        }
        admission.enqueue(id, write)
    }

    /// Completes a running op: its effect, then the release of each var.
    ///
    /// The effect is placed at completion, atomically: the engine runs an op's body somewhere
    /// between Start and Complete, and as long as conflicting ops never run at once (which
    /// [`properties::WRITER_ALONE`] checks) when inside that span it acts is unobservable.
    fn complete(&self, state: &mut LocalState, id: OpId) {
        let info = self.op(id);
        match info.step {
            Step::Push { key, .. } => state.stored[key] = info.value,
            Step::Pull { key, .. } | Step::RowSparsePull { key, .. } => {
                state.op_mut(id).read = state.stored[key];
            }
            Step::WaitAll => {}
        }
        state.op_mut(id).phase = Phase::Done;
        for &(var, write) in &info.vars {
            state.effects[var].push(id);
            let mut granted = state.vars[var].release(write);
            if self.has(Fault::LostWakeup) {
                granted.truncate(1);
            }
            for next in granted {
                let op = state.op_mut(next);
                op.unmet = op.unmet.saturating_sub(1);
                if op.unmet == 0 {
                    self.make_ready(state, next);
                }
            }
        }
    }

    fn make_ready(&self, state: &mut LocalState, id: OpId) {
        let seq = state.op(id).seq;
        state.op_mut(id).phase = Phase::Ready;
        state.ready.push(self.op(id).priority, u64::from(seq), id);
    }
}

fn op_info(client: usize, step: Step, keys: usize, value: u8) -> OpInfo {
    let (priority, vars) = match step {
        Step::Push { key, priority } => (priority, vec![(key, true)]),
        Step::Pull {
            key, out, priority, ..
        }
        | Step::RowSparsePull {
            key, out, priority, ..
        } => (priority, vec![(key, false), (keys + out, true)]),
        Step::WaitAll => (0, Vec::new()),
    };
    OpInfo {
        client,
        step,
        priority,
        vars,
        value,
    }
}

impl Model for LocalModel {
    type State = LocalState;
    type Action = LocalAction;

    fn init_states(&self) -> Vec<LocalState> {
        let op = OpState {
            phase: Phase::Unissued,
            seq: 0,
            unmet: 0,
            read: 0,
            expected: 0,
        };
        vec![LocalState {
            pc: vec![0; self.scripts.len()],
            ops: vec![op; self.ops.len()],
            vars: vec![Default::default(); self.vars],
            ready: Default::default(),
            next_seq: 0,
            stored: vec![0; self.config.keys],
            last_issued: vec![0; self.config.keys],
            effects: vec![Vec::new(); self.vars],
        }]
    }

    fn actions(&self, state: &LocalState, actions: &mut Vec<LocalAction>) {
        for (client, script) in self.scripts.iter().enumerate() {
            match self.blocked_in(state, client) {
                Some(wait) if self.may_return(state, state.op(wait).seq) => {
                    actions.push(LocalAction::Return(client));
                }
                None if usize::from(state.pc[client]) < script.len() => {
                    actions.push(LocalAction::Issue(client));
                }
                _ => {}
            }
        }
        if self.worker_free(state) && !state.ready.is_empty() {
            actions.push(LocalAction::Start);
        }
        actions.extend(state.in_phase(Phase::Running).map(LocalAction::Complete));
    }

    fn next_state(&self, last: &LocalState, action: LocalAction) -> Option<LocalState> {
        let mut state = last.clone();
        match action {
            LocalAction::Issue(client) => {
                let id = *self.scripts[client].get(usize::from(state.pc[client]))?;
                state.pc[client] += 1;
                self.issue(&mut state, id);
            }
            LocalAction::Return(client) => {
                let wait = self.blocked_in(&state, client)?;
                state.op_mut(wait).phase = Phase::Done;
            }
            LocalAction::Start => {
                let id = state.ready.pop()?;
                state.op_mut(id).phase = Phase::Running;
            }
            LocalAction::Complete(id) => self.complete(&mut state, id),
        }
        Some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        properties::all()
    }
}
