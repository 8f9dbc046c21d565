//! Optimizers with PyTorch's update rules: SGD with Nesterov momentum (candle has none) and Adam.
//! Both take a list of (summed) gradients, one per variable, so gradient accumulation is the caller's.

use candle_core::{Result, Tensor, Var};

/// One update of every variable from its gradient.
pub trait Optimizer {
    /// Applies one step; `grads[i]` belongs to `vars()[i]` (`None`: no gradient this step).
    fn step(&mut self, grads: &[Option<Tensor>]) -> Result<()>;
    /// The variables being optimized.
    fn vars(&self) -> &[Var];
}

/// SGD with Nesterov momentum, as `torch.optim.SGD(nesterov=True)`: b = mu b + g (b = g at the
/// first step); p -= lr (g + mu b).
pub struct NesterovSgd {
    vars: Vec<Var>,
    lr: f64,
    momentum: f64,
    buffers: Vec<Option<Tensor>>,
}

impl NesterovSgd {
    /// An optimizer over `vars` with learning rate `lr` and momentum `momentum`.
    pub fn new(vars: Vec<Var>, lr: f64, momentum: f64) -> Self {
        let buffers = vec![None; vars.len()];
        NesterovSgd {
            vars,
            lr,
            momentum,
            buffers,
        }
    }
}

impl Optimizer for NesterovSgd {
    fn step(&mut self, grads: &[Option<Tensor>]) -> Result<()> {
        for ((var, buf), g) in self.vars.iter().zip(self.buffers.iter_mut()).zip(grads) {
            let Some(g) = g else { continue };
            let g = &g.detach();
            let b = match buf.take() {
                Some(b) => ((b * self.momentum)? + g)?,
                None => g.clone(),
            };
            let update = (g + (&b * self.momentum)?)?;
            var.set(&(var.as_tensor() - (update * self.lr)?)?)?;
            *buf = Some(b);
        }
        Ok(())
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
    moments: Vec<Option<(Tensor, Tensor)>>,
}

impl Adam {
    /// An optimizer over `vars` with learning rate `lr`.
    pub fn new(vars: Vec<Var>, lr: f64) -> Self {
        let moments = vec![None; vars.len()];
        Adam {
            vars,
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            t: 0,
            moments,
        }
    }
}

impl Optimizer for Adam {
    fn step(&mut self, grads: &[Option<Tensor>]) -> Result<()> {
        self.t += 1;
        let c1 = 1.0 - self.beta1.powi(self.t);
        let c2 = 1.0 - self.beta2.powi(self.t);
        for ((var, mom), g) in self.vars.iter().zip(self.moments.iter_mut()).zip(grads) {
            let Some(g) = g else { continue };
            let g = &g.detach();
            let (m, v) = match mom.take() {
                Some((m, v)) => (
                    ((m * self.beta1)? + (g * (1.0 - self.beta1))?)?,
                    ((v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?,
                ),
                None => ((g * (1.0 - self.beta1))?, (g.sqr()? * (1.0 - self.beta2))?),
            };
            let denom = ((&v / c2)?.sqrt()? + self.eps)?;
            let update = ((&m / c1)? / denom)?;
            var.set(&(var.as_tensor() - (update * self.lr)?)?)?;
            *mom = Some((m, v));
        }
        Ok(())
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
