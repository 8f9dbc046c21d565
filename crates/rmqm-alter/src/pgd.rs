//! PGD walks: x_j = clip(x_{j-1} + alpha * sign(grad_x L), 0, 1), L the model's own training loss,
//! gradients with respect to the input only (the model's weights are frozen plain tensors, so the
//! custom ops compute no weight gradients).

use candle_core::{DType, Result, Tensor, Var};
use rmqm_models::{Encoder, Method};
use rmqm_train::{Augmentation, BatchEmbeddings, augment_batch, embedding_loss};
use std::fmt;
use std::str::FromStr;

/// How a step uses the gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgdStep {
    /// alpha * sign(gradient) (FGSM/PGD; the default).
    Sign,
    /// alpha * gradient, as equation (1) is printed.
    Raw,
}

/// How level j relates to level j-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgdWalk {
    /// Each level extends the previous one (equation (1)).
    Continue,
    /// Level j is j fresh iterations from the clean image (the reference code).
    Restart,
}

macro_rules! text_enum {
    ($t:ty, $($v:path => $s:expr),+) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $($v => $s),+ })
            }
        }
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                match s { $($s => Ok($v),)+ o => Err(format!("unknown value {o:?}")) }
            }
        }
    };
}
text_enum!(PgdStep, PgdStep::Sign => "sign", PgdStep::Raw => "raw");
text_enum!(PgdWalk, PgdWalk::Continue => "continue", PgdWalk::Restart => "restart");

/// The PGD walk's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PgdConfig {
    /// J: levels are 0..=J.
    pub steps: usize,
    /// Step size (2/255 by default).
    pub alpha: f64,
    /// Sign or raw gradient.
    pub step: PgdStep,
    /// Continue or restart.
    pub walk: PgdWalk,
    /// Optional L-infinity radius around the clean image.
    pub radius: Option<f64>,
    /// Seed of the augmented views the self-supervised losses compare against.
    pub seed: u64,
}

/// The attack loss of `model`'s method on a batch at `x`: the method's own training loss
/// ([`embedding_loss`], the same function training minimises, so every term keeps its training
/// weight) times the batch size. For cross-entropy that is the sum over images, so each image's
/// gradient is its own; for triplet-entropy, n (mean cross-entropy + mean semihard triplet), the
/// two terms weighed 1:1 as in training. The self-supervised methods compare each image with a
/// seeded augmented view of it, held constant (no gradient flows through the view).
/// Returns the loss with the embeddings of `x` the forward pass made.
fn attack_loss(
    model: &Encoder,
    x: &Tensor,
    x_now: &[f32],
    labels: &[i64],
    ids: &[u32],
    key: u64,
    seed: u64,
) -> Result<AttackLoss> {
    let cfg = model.config();
    let n = labels.len();
    let emb = model.embed(x, false)?;
    let loss = match cfg.method {
        Method::CrossEntropy | Method::TripletEntropy | Method::TripletSupervised => {
            embedding_loss(
                model,
                cfg.method,
                &BatchEmbeddings::Labelled {
                    embeddings: &emb,
                    labels,
                },
            )?
        }
        Method::TripletSs | Method::Ntxent => {
            let (c, h, w) = (cfg.channels, cfg.height, cfg.width);
            let imgs: Vec<&[f32]> = x_now.chunks(c * h * w).collect();
            let v = augment_batch(
                Augmentation::for_images(c),
                &imgs,
                ids,
                c,
                h,
                w,
                seed,
                key,
                0,
            );
            let v = Tensor::from_vec(v, (n, c, h, w), x.device())?.to_dtype(emb.dtype())?;
            let view = model.embed(&v, false)?.detach();
            embedding_loss(
                model,
                cfg.method,
                &BatchEmbeddings::Views {
                    first: &emb,
                    second: &view,
                },
            )?
        }
    };
    Ok(AttackLoss {
        loss: (loss * n as f64)?,
        embeddings: emb,
    })
}

/// The attack loss of a batch and the forward pass's embeddings of it.
struct AttackLoss {
    /// The loss whose input gradient the step follows.
    loss: Tensor,
    /// The batch's embeddings (B x dim), as `Encoder::embed` computes them.
    embeddings: Tensor,
}

/// One PGD update: the next images and the embeddings of the images it started from.
struct PgdUpdate {
    /// The updated batch (B images of C*H*W values).
    next: Vec<f32>,
    /// The model's embeddings of the batch before the update (B x dim), from the update's own
    /// forward pass.
    embeddings: Tensor,
}

/// One PGD update of the batch `x` (B images of C*H*W values); `clean` bounds the radius; `key`
/// selects the augmentation stream of this update.
pub fn pgd_step(
    model: &Encoder,
    x: &[f32],
    clean: &[f32],
    labels: &[i64],
    ids: &[u32],
    cfg: &PgdConfig,
    key: u64,
) -> Result<Vec<f32>> {
    Ok(pgd_update(model, x, clean, labels, ids, cfg, key)?.next)
}

/// [`pgd_step`] with the embeddings of `x` its forward pass made.
fn pgd_update(
    model: &Encoder,
    x: &[f32],
    clean: &[f32],
    labels: &[i64],
    ids: &[u32],
    cfg: &PgdConfig,
    key: u64,
) -> Result<PgdUpdate> {
    let mc = model.config();
    let n = labels.len();
    let xt = Tensor::from_slice(
        x,
        (n, mc.channels, mc.height, mc.width),
        &rmqm_models::device(),
    )?;
    let var = Var::from_tensor(&xt)?;
    let AttackLoss { loss, embeddings } =
        attack_loss(model, var.as_tensor(), x, labels, ids, key, cfg.seed)?;
    let grads = loss.backward()?;
    let g: Vec<f32> = match grads.get(var.as_tensor()) {
        Some(g) => g.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
        None => vec![0.0; x.len()],
    };
    let alpha = cfg.alpha as f32;
    let radius = cfg.radius.map(|r| r as f32);
    let next = x
        .iter()
        .zip(&g)
        .zip(clean)
        .map(|((&xi, &gi), &ci)| {
            let d = match cfg.step {
                PgdStep::Sign => {
                    alpha
                        * if gi > 0.0 {
                            1.0
                        } else if gi < 0.0 {
                            -1.0
                        } else {
                            0.0
                        }
                }
                PgdStep::Raw => alpha * gi,
            };
            let mut v = xi + d;
            if let Some(r) = radius {
                v = v.clamp(ci - r, ci + r);
            }
            v.clamp(0.0, 1.0)
        })
        .collect();
    Ok(PgdUpdate {
        next,
        embeddings: embeddings.detach(),
    })
}

/// The key of update `t` of level `level` (0 for the continuing walk).
fn key(level: usize, t: usize) -> u64 {
    (level as u64) << 32 | t as u64
}

/// Walks a batch: returns levels 0..=J, each B images of C*H*W values (level 0 = clean).
pub fn pgd_batch(
    model: &Encoder,
    clean: &[f32],
    labels: &[i64],
    ids: &[u32],
    cfg: &PgdConfig,
) -> Result<Vec<Vec<f32>>> {
    Ok(pgd_walk(model, clean, labels, ids, cfg, false)?.images)
}

/// A batch's walk: the images of every level and, when asked for, the model's embeddings of them.
#[derive(Debug, Clone, PartialEq)]
pub struct PgdLevels {
    /// Levels 0..=J, each B images of C*H*W values (level 0 = clean).
    pub images: Vec<Vec<f32>>,
    /// Levels 0..=J, each B embeddings of the model's dim (f32), when asked for; empty otherwise.
    pub embeddings: Vec<Vec<f32>>,
}

/// Walks a batch like [`pgd_batch`]; with `embed`, also returns the model's embedding of every
/// level, bit for bit as any forward pass of at least `Encoder::row_invariant_rows` images computes
/// them (`embed`'s passes of 256 rows). The continuing walk takes them from its own updates'
/// forward passes (level j - 1's from update j) and makes one more pass for level J: J + 1 forward
/// passes instead of 2J + 1 for walk and embedding apart; a batch of fewer images embeds every
/// level apart instead, padded (`Encoder::embed_pixels_padded`). The restarting walk embeds each
/// level after its walk.
pub fn pgd_walk(
    model: &Encoder,
    clean: &[f32],
    labels: &[i64],
    ids: &[u32],
    cfg: &PgdConfig,
    embed: bool,
) -> Result<PgdLevels> {
    let n = labels.len();
    let as_vec =
        |e: &Tensor| -> Result<Vec<f32>> { e.to_dtype(DType::F32)?.flatten_all()?.to_vec1() };
    let embed_level = |x: &[f32]| model.embed_pixels_padded(x, n);
    // A batch too small for row-invariant products embeds its levels apart, padded, so that the
    // embeddings equal those of `embed`'s passes (256 rows by default).
    let reuse_updates = n >= model.row_invariant_rows();
    let mut images = vec![clean.to_vec()];
    let mut embeddings = Vec::new();
    match cfg.walk {
        PgdWalk::Continue => {
            for j in 1..=cfg.steps {
                let update = pgd_update(model, &images[j - 1], clean, labels, ids, cfg, key(0, j))?;
                if embed {
                    embeddings.push(if reuse_updates {
                        as_vec(&update.embeddings)?
                    } else {
                        embed_level(&images[j - 1])?
                    });
                }
                images.push(update.next);
            }
            if embed {
                embeddings.push(embed_level(&images[cfg.steps])?);
            }
        }
        PgdWalk::Restart => {
            for j in 1..=cfg.steps {
                let mut x = clean.to_vec();
                for t in 1..=j {
                    x = pgd_step(model, &x, clean, labels, ids, cfg, key(j, t))?;
                }
                images.push(x);
            }
            if embed {
                embeddings = images
                    .iter()
                    .map(|x| embed_level(x))
                    .collect::<Result<_>>()?;
            }
        }
    }
    Ok(PgdLevels { images, embeddings })
}
