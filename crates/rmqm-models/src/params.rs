//! Parameter creation: seeded initialisation (independent of creation order) or loading from a
//! saved model; trainable parameters become candle `Var`s, frozen ones plain tensors.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

/// How a new parameter is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Uniform in [-bound, bound] (PyTorch's default for conv and linear: 1/sqrt(fan_in)).
    Uniform(f64),
    /// Every value equal.
    Const(f64),
}

/// A tensor that is updated outside autograd (batch-norm running statistics).
pub type Buffer = Arc<Mutex<Tensor>>;

/// A count saved with the model as a scalar int64 tensor (batch norm's `num_batches_tracked`,
/// which PyTorch's `load_state_dict(strict=True)` expects).
pub type Counter = Arc<AtomicI64>;

enum Source {
    Init { seed: u64 },
    Load(HashMap<String, Tensor>),
}

/// Creates and records every named parameter and buffer of a model.
pub struct ParamStore {
    source: Source,
    dtype: DType,
    device: Device,
    trainable: bool,
    params: Vec<(String, Tensor)>,
    vars: Vec<Var>,
    buffers: Vec<(String, Buffer)>,
    counters: Vec<(String, Counter)>,
}

/// FNV-1a hash of a name, mixed with the seed: each parameter's stream depends only on both.
fn stream_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl ParamStore {
    /// A store that initialises new parameters from `seed`.
    pub fn init(seed: u64, dtype: DType, device: &Device, trainable: bool) -> Self {
        ParamStore {
            source: Source::Init { seed },
            dtype,
            device: device.clone(),
            trainable,
            params: vec![],
            vars: vec![],
            buffers: vec![],
            counters: vec![],
        }
    }

    /// A store that takes parameters from saved tensors (converted to `dtype`).
    pub fn load(
        tensors: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
        trainable: bool,
    ) -> Self {
        ParamStore {
            source: Source::Load(tensors),
            dtype,
            device: device.clone(),
            trainable,
            params: vec![],
            vars: vec![],
            buffers: vec![],
            counters: vec![],
        }
    }

    fn make(&mut self, name: &str, shape: &Shape, init: Init) -> Result<Tensor> {
        match &self.source {
            Source::Init { seed } => {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(stream_seed(*seed, name));
                let values: Vec<f64> = (0..shape.elem_count())
                    .map(|_| match init {
                        Init::Uniform(b) => rng.random_range(-b..=b),
                        Init::Const(c) => c,
                    })
                    .collect();
                Tensor::from_vec(values, shape, &self.device)?.to_dtype(self.dtype)
            }
            Source::Load(map) => {
                let t = map.get(name).ok_or_else(|| {
                    candle_core::Error::Msg(format!("saved model has no tensor {name}"))
                })?;
                if t.shape() != shape {
                    candle_core::bail!(
                        "tensor {name} has shape {:?} in the file, the model needs {:?}",
                        t.dims(),
                        shape.dims()
                    );
                }
                t.to_dtype(self.dtype)?.to_device(&self.device)
            }
        }
    }

    /// A named parameter (a `Var` when the store is trainable).
    pub fn param(&mut self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Tensor> {
        let shape = shape.into();
        let t = self.make(name, &shape, init)?;
        let t = if self.trainable {
            let v = Var::from_tensor(&t)?;
            let t = v.as_tensor().clone();
            self.vars.push(v);
            t
        } else {
            t
        };
        self.params.push((name.to_string(), t.clone()));
        Ok(t)
    }

    /// A named buffer: saved with the model but never trained.
    pub fn buffer(&mut self, name: &str, shape: impl Into<Shape>, value: f64) -> Result<Buffer> {
        let shape = shape.into();
        let t = self.make(name, &shape, Init::Const(value))?;
        let b = Arc::new(Mutex::new(t));
        self.buffers.push((name.to_string(), b.clone()));
        Ok(b)
    }

    /// A named counter: 0 for a new model, else the saved value (0 when the file predates saved
    /// counters).
    pub fn counter(&mut self, name: &str) -> Result<Counter> {
        let start = match &self.source {
            Source::Init { .. } => 0,
            Source::Load(map) => match map.get(name) {
                None => 0,
                Some(t) => match t.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?[..] {
                    [v] => v,
                    _ => candle_core::bail!(
                        "tensor {name} has shape {:?} in the file, a counter is a scalar",
                        t.dims()
                    ),
                },
            },
        };
        let c = Arc::new(AtomicI64::new(start));
        self.counters.push((name.to_string(), c.clone()));
        Ok(c)
    }

    /// The element type of new tensors.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device of new tensors.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// True when parameters are `Var`s that training updates; false for a frozen model.
    pub fn trainable(&self) -> bool {
        self.trainable
    }

    /// Trainable variables in creation order.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// Every named parameter, buffer and counter (current values), for saving; counters as int64
    /// scalars, the rest in the store's element type.
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut v: Vec<(String, Tensor)> = self.params.clone();
        v.extend(
            self.buffers
                .iter()
                .map(|(n, b)| (n.clone(), b.lock().unwrap().clone())),
        );
        for (n, c) in &self.counters {
            v.push((
                n.clone(),
                Tensor::new(c.load(Ordering::Relaxed), &self.device)?,
            ));
        }
        Ok(v)
    }
}
