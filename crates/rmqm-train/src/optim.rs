//! Optimizers with PyTorch's update rules: SGD with Nesterov momentum (candle has none) and Adam.
//! Both take a list of (summed) gradients, one per variable, so gradient accumulation is the caller's.
//! Each variable is updated in place by one fused pass over its elements (split over cores), with
//! the optimizer state kept in the variable's element type; the arithmetic of an element runs in
//! f64 and is rounded once.

use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor, Var, bail};
use rayon::prelude::*;
use rmqm_models::kernels::Real;
use std::sync::Mutex;

/// One update of every variable from its gradient.
pub trait Optimizer {
    /// Applies one step; `grads[i]` belongs to `vars()[i]` (`None`: no gradient this step).
    fn step(&mut self, grads: &[Option<Tensor>]) -> Result<()>;
    /// The variables being optimized.
    fn vars(&self) -> &[Var];
}

/// Per-variable optimizer state: one or two buffers shaped like the variable, in its dtype.
#[derive(Debug)]
enum State {
    F32(Vec<f32>, Vec<f32>),
    F64(Vec<f64>, Vec<f64>),
}

/// The update rule an in-place step applies to each element.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// b = mu b + g (b = g at the first step); p -= lr (g + mu b).
    Nesterov { lr: f64, momentum: f64, first: bool },
    /// m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; p -= lr (m / c1) / (sqrt(v / c2) + eps).
    Adam {
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        c1: f64,
        c2: f64,
    },
}

/// Applies `rule` to parameters `p` with gradient `g` and state buffers `a`, `b`.
fn apply_rule<T: Real>(rule: Rule, p: &mut [T], g: &[T], a: &mut [T], b: &mut [T]) {
    const CHUNK: usize = 1 << 13;
    let chunks = p
        .par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(a.par_chunks_mut(CHUNK).zip(b.par_chunks_mut(CHUNK)));
    // One loop per rule, the rule chosen once: each loop runs in vector lanes.
    match rule {
        Rule::Nesterov {
            lr,
            momentum,
            first,
        } => chunks.for_each(|((p, g), (buf, _))| nesterov(p, g, buf, lr, momentum, first)),
        Rule::Adam {
            lr,
            beta1,
            beta2,
            eps,
            c1,
            c2,
        } => chunks.for_each(|((p, g), (m, v))| {
            let moments = AdamMoments {
                beta1,
                beta2,
                c1,
                c2,
            };
            adam(p, g, m, v, lr, eps, moments)
        }),
    }
}

/// Nesterov SGD on one run of elements: buf = mu buf + g (g at the first step),
/// p -= lr (g + mu buf).
fn nesterov<T: Real>(p: &mut [T], g: &[T], buf: &mut [T], lr: f64, momentum: f64, first: bool) {
    for ((p, &g), a) in p.iter_mut().zip(g).zip(buf) {
        let gv = g.to_f64();
        let b = if first {
            gv
        } else {
            momentum * a.to_f64() + gv
        };
        *a = T::from_f64(b);
        *p = T::from_f64(p.to_f64() - lr * (gv + momentum * b));
    }
}

/// Adam's decay rates and bias corrections.
#[derive(Debug, Clone, Copy)]
struct AdamMoments {
    beta1: f64,
    beta2: f64,
    c1: f64,
    c2: f64,
}

/// Adam on one run of elements: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
/// p -= lr (m / c1) / (sqrt(v / c2) + eps).
fn adam<T: Real>(
    p: &mut [T],
    g: &[T],
    m: &mut [T],
    v: &mut [T],
    lr: f64,
    eps: f64,
    k: AdamMoments,
) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
        let gv = g.to_f64();
        let mv = k.beta1 * m.to_f64() + (1.0 - k.beta1) * gv;
        let vv = k.beta2 * v.to_f64() + (1.0 - k.beta2) * gv * gv;
        *m = T::from_f64(mv);
        *v = T::from_f64(vv);
        *p = T::from_f64(p.to_f64() - lr * (mv / k.c1) / ((vv / k.c2).sqrt() + eps));
    }
}

/// One variable's update as a candle in-place op: applied as `var.inplace_op2(grad, op)`.
struct Step<'a> {
    rule: Rule,
    state: Mutex<&'a mut Option<State>>,
}

impl InplaceOp2 for Step<'_> {
    fn name(&self) -> &'static str {
        "rmqm-optimizer-step"
    }
    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        grad: &CpuStorage,
        grad_l: &Layout,
    ) -> Result<()> {
        let (Some((p0, p1)), Some((g0, g1))) =
            (dst_l.contiguous_offsets(), grad_l.contiguous_offsets())
        else {
            bail!("optimizer: parameter and gradient must be contiguous");
        };
        if p1 - p0 != g1 - g0 {
            bail!("optimizer: {} parameters, {} gradients", p1 - p0, g1 - g0);
        }
        let n = p1 - p0;
        let mut state = self.state.lock().expect("optimizer state");
        match (dst, grad) {
            (CpuStorage::F32(p), CpuStorage::F32(g)) => {
                let st = state.get_or_insert_with(|| State::F32(vec![0.0; n], vec![0.0; n]));
                let State::F32(a, b) = st else {
                    bail!("optimizer: state dtype changed")
                };
                apply_rule(self.rule, &mut p[p0..p1], &g[g0..g1], a, b);
            }
            (CpuStorage::F64(p), CpuStorage::F64(g)) => {
                let st = state.get_or_insert_with(|| State::F64(vec![0.0; n], vec![0.0; n]));
                let State::F64(a, b) = st else {
                    bail!("optimizer: state dtype changed")
                };
                apply_rule(self.rule, &mut p[p0..p1], &g[g0..g1], a, b);
            }
            _ => bail!("optimizer: parameters and gradients must both be f32 or f64"),
        }
        Ok(())
    }
}

/// Applies `rule` to every variable with a gradient, in place.
fn step_all(
    vars: &[Var],
    states: &mut [Option<State>],
    grads: &[Option<Tensor>],
    rule: impl Fn(bool) -> Rule,
) -> Result<()> {
    for ((var, state), g) in vars.iter().zip(states.iter_mut()).zip(grads) {
        let Some(g) = g else { continue };
        let g = g.detach().contiguous()?;
        if g.shape() != var.shape() {
            bail!(
                "optimizer: gradient shape {:?} for a variable of shape {:?}",
                g.dims(),
                var.dims()
            );
        }
        let first = state.is_none();
        let op = Step {
            rule: rule(first),
            state: Mutex::new(state),
        };
        var.as_tensor().inplace_op2(&g, &op)?;
    }
    Ok(())
}

/// SGD with Nesterov momentum, as `torch.optim.SGD(nesterov=True)`: b = mu b + g (b = g at the
/// first step); p -= lr (g + mu b).
pub struct NesterovSgd {
    vars: Vec<Var>,
    lr: f64,
    momentum: f64,
    states: Vec<Option<State>>,
}

impl NesterovSgd {
    /// An optimizer over `vars` with learning rate `lr` and momentum `momentum`.
    pub fn new(vars: Vec<Var>, lr: f64, momentum: f64) -> Self {
        let states = (0..vars.len()).map(|_| None).collect();
        NesterovSgd {
            vars,
            lr,
            momentum,
            states,
        }
    }
}

impl Optimizer for NesterovSgd {
    fn step(&mut self, grads: &[Option<Tensor>]) -> Result<()> {
        let (lr, momentum) = (self.lr, self.momentum);
        step_all(&self.vars, &mut self.states, grads, |first| {
            Rule::Nesterov {
                lr,
                momentum,
                first,
            }
        })
    }
    fn vars(&self) -> &[Var] {
        &self.vars
    }
}

/// Adam as `torch.optim.Adam` with its defaults (betas 0.9, 0.999; eps 1e-8), no weight decay.
pub struct Adam {
    vars: Vec<Var>,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    t: i32,
    states: Vec<Option<State>>,
}

impl Adam {
    /// An optimizer over `vars` with learning rate `lr`.
    pub fn new(vars: Vec<Var>, lr: f64) -> Self {
        let states = (0..vars.len()).map(|_| None).collect();
        Adam {
            vars,
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            t: 0,
            states,
        }
    }
}

impl Optimizer for Adam {
    fn step(&mut self, grads: &[Option<Tensor>]) -> Result<()> {
        self.t += 1;
        let rule = Rule::Adam {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            c1: 1.0 - self.beta1.powi(self.t),
            c2: 1.0 - self.beta2.powi(self.t),
        };
        step_all(&self.vars, &mut self.states, grads, |_| rule)
    }
    fn vars(&self) -> &[Var] {
        &self.vars
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn var(v: &[f64]) -> Var {
        Var::from_tensor(&Tensor::new(v, &Device::Cpu).unwrap()).unwrap()
    }
    fn values(v: &Var) -> Vec<f64> {
        v.as_tensor().to_vec1().unwrap()
    }

    #[test]
    fn nesterov_matches_a_hand_computed_step() {
        let p = var(&[1.0, -2.0]);
        let mut opt = NesterovSgd::new(vec![p.clone()], 0.1, 0.9);
        let g1 = Tensor::new(&[0.5, 1.0], &Device::Cpu).unwrap();
        opt.step(&[Some(g1)]).unwrap();
        // b = g = (0.5, 1); update = g + 0.9 b = (0.95, 1.9); p = (1 - 0.095, -2 - 0.19).
        let v = values(&p);
        assert!(
            (v[0] - 0.905).abs() < 1e-12 && (v[1] + 2.19).abs() < 1e-12,
            "{v:?}"
        );
        let g2 = Tensor::new(&[1.0, 0.0], &Device::Cpu).unwrap();
        opt.step(&[Some(g2)]).unwrap();
        // b = 0.9 (0.5, 1) + (1, 0) = (1.45, 0.9); update = (1 + 1.305, 0 + 0.81); p -= 0.1 update.
        let v = values(&p);
        assert!(
            (v[0] - (0.905 - 0.2305)).abs() < 1e-12 && (v[1] - (-2.19 - 0.081)).abs() < 1e-12,
            "{v:?}"
        );
    }

    #[test]
    fn adam_matches_the_formula_over_several_steps_in_f32_and_f64() {
        let grads = [[0.3, -1.2, 2.0], [-0.7, 0.4, 0.0], [1.5, 1.5, -0.1]];
        // plain re-statement of torch.optim.Adam's defaults
        let (lr, b1, b2, eps): (f64, f64, f64, f64) = (0.05, 0.9, 0.999, 1e-8);
        let (mut p, mut m, mut v) = ([1.0f64, -2.0, 0.5], [0.0; 3], [0.0; 3]);
        for (t, g) in grads.iter().enumerate() {
            let (c1, c2) = (1.0 - b1.powi(t as i32 + 1), 1.0 - b2.powi(t as i32 + 1));
            for i in 0..3 {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                p[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
            }
        }
        for dtype in [candle_core::DType::F64, candle_core::DType::F32] {
            let x = Var::from_tensor(
                &Tensor::new(&[1.0f64, -2.0, 0.5], &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap(),
            )
            .unwrap();
            let mut opt = Adam::new(vec![x.clone()], lr);
            for g in &grads {
                let g = Tensor::new(g, &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                opt.step(&[Some(g)]).unwrap();
            }
            let got: Vec<f64> = x
                .as_tensor()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_vec1()
                .unwrap();
            let tol = if dtype == candle_core::DType::F64 {
                1e-12
            } else {
                1e-6
            };
            for (a, b) in got.iter().zip(&p) {
                assert!((a - b).abs() < tol, "{dtype:?}: {got:?} vs {p:?}");
            }
        }
    }

    #[test]
    fn adam_first_step_moves_by_lr_times_sign() {
        let p = var(&[1.0, -2.0, 0.0]);
        let mut opt = Adam::new(vec![p.clone()], 0.01);
        opt.step(&[Some(Tensor::new(&[3.0, -0.5, 0.0], &Device::Cpu).unwrap())])
            .unwrap();
        // m_hat = g, v_hat = g^2: update = g / (|g| + eps).
        let v = values(&p);
        assert!(
            (v[0] - 0.99).abs() < 1e-9 && (v[1] + 1.99).abs() < 1e-9 && v[2] == 0.0,
            "{v:?}"
        );
    }
}
