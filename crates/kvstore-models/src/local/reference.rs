//! The executable spec as the model's reference: a finished run's calls, replayed in issue order
//! on `kvstore_spec`'s `LocalStore`, must give what the model's clients saw.

use kvstore_spec::kind::Kind;
use kvstore_spec::store::LocalStore;
use kvstore_spec::{DType, Key, Result, RowSparse, Tensor, Value};

use super::config::Step;
use super::model::LocalModel;
use super::state::{LocalState, OpId, Phase};

/// The keys' shape: 2 rows of 1 element, so a row_sparse_pull can retain a strict subset.
const SHAPE: [usize; 2] = [2, 1];

/// The value with id `id`: 0 is every key's initial value, a push's id is unique to it.
pub fn value_of(id: u8) -> Result<Value> {
    let x = f32::from(id);
    Ok(Value::Dense(Tensor::new(SHAPE, vec![x, x + 0.5])?))
}

/// Whether replaying `state`'s issued calls on the spec gives the values its pulls read and its
/// keys hold. Any spec error is a disagreement.
pub(crate) fn agrees(model: &LocalModel, state: &LocalState) -> bool {
    replay(model, state).unwrap_or(false)
}

fn replay(model: &LocalModel, state: &LocalState) -> Result<bool> {
    let mut spec = LocalStore::new(Kind::parse("local")?)?;
    let keys = model.config().keys;
    let initial: Vec<(Key, Value)> = (0..keys)
        .map(|key| Ok((key_of(key), value_of(0)?)))
        .collect::<Result<_>>()?;
    spec.init(&initial)?;
    let mut issued: Vec<OpId> = (0..)
        .zip(&state.ops)
        .filter(|&(id, op)| op.phase != Phase::Unissued && !model.op(id).is_wait_all())
        .map(|(id, _)| id)
        .collect();
    issued.sort_by_key(|&id| state.op(id).seq);
    for id in issued {
        let read = state.op(id).read;
        let agrees = match &model.op(id).step {
            Step::Push { key, .. } => {
                spec.push(&[(key_of(*key), value_of(model.op(id).value)?)])?;
                true
            }
            Step::Pull { key, .. } => {
                let out = Value::Dense(Tensor::zeros(SHAPE, DType::F32)?);
                spec.pull(&[(key_of(*key), out)], true)? == vec![value_of(read)?]
            }
            Step::RowSparsePull { key, rows, .. } => {
                let out = Value::RowSparse(RowSparse::empty(SHAPE, DType::F32)?);
                let got =
                    spec.row_sparse_pull(&[(key_of(*key), out)], std::slice::from_ref(rows))?;
                got.iter().map(Value::to_f32).collect::<Vec<_>>()
                    == vec![retained(&value_of(read)?, rows)]
            }
            Step::WaitAll => true,
        };
        if !agrees {
            return Ok(false);
        }
    }
    for key in 0..keys {
        if spec.value(&key_of(key)) != Some(&value_of(state.stored[key])?) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn key_of(key: usize) -> Key {
    Key::Int(key as i64)
}

/// The dense elements of `value` with every row not in `rows` zeroed: what a row_sparse output
/// holds, densified.
fn retained(value: &Value, rows: &[i64]) -> Vec<f32> {
    let row_len = SHAPE[1];
    value
        .to_f32()
        .chunks(row_len)
        .zip(0..)
        .flat_map(|(row, id)| {
            let keep = rows.contains(&id);
            row.iter().map(move |&x| if keep { x } else { 0.0 })
        })
        .collect()
}
