//! Diagnostic: trains NT-Xent on MNIST and prints per-step loss, gradient norm and embedding norms.
use candle_core::{DType, Device, Tensor};
use rmqm_models::*;
use rmqm_train::*;
fn main() -> candle_core::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap());
    let data = rmqm_data::load(
        rmqm_data::Dataset::Mnist,
        &dir,
        "train",
        &Default::default(),
    )
    .unwrap();
    let (mean, std) = dataset_normalisation("mnist", 1);
    let cfg = ModelConfig {
        model_id: "d".into(),
        arch: Arch::Lenet5,
        method: Method::Ntxent,
        dim: 128,
        optimizer: OptimizerKind::Adam,
        dataset: "mnist".into(),
        epochs: 0,
        seed: 0,
        channels: 1,
        height: 28,
        width: 28,
        mean,
        std,
        classes: 10,
        batch_size: 64,
        accumulate: 8,
        learning_rate: 1e-3,
        temperature: 0.07,
        margin: 0.5,
    };
    let model = Encoder::init(cfg, DType::F32, &Device::Cpu, true)?;
    let vars = model.vars().to_vec();
    let mut opt = Adam::new(vars.clone(), 1e-3);
    let aug = Augmentation::for_images(1);
    let probe: Vec<usize> = (0..256).collect();
    let xp = batch_tensor(&data, &probe, &Device::Cpu)?;
    let mut step = 0;
    for epoch in 0..4u64 {
        let order: Vec<usize> = {
            use rand::SeedableRng;
            use rand::seq::SliceRandom;
            let mut o: Vec<usize> = (0..data.len()).collect();
            o.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(epoch + 1));
            o
        };
        let mut acc: Vec<Option<Tensor>> = vec![None; vars.len()];
        let mut losses = vec![];
        for (bi, batch) in order.chunks(64).enumerate() {
            let imgs: Vec<&[f32]> = batch.iter().map(|&i| data.image(i)).collect();
            let ids: Vec<u32> = batch.iter().map(|&i| data.ids[i]).collect();
            let v1 = Tensor::from_vec(
                augment_batch(aug, &imgs, &ids, 1, 28, 28, 0, epoch, 0),
                (batch.len(), 1, 28, 28),
                &Device::Cpu,
            )?;
            let v2 = Tensor::from_vec(
                augment_batch(aug, &imgs, &ids, 1, 28, 28, 0, epoch, 1),
                (batch.len(), 1, 28, 28),
                &Device::Cpu,
            )?;
            let loss = method_loss(
                &model,
                Method::Ntxent,
                &BatchInput::Views {
                    first: &v1,
                    second: &v2,
                },
                true,
            )?;
            losses.push(loss.to_scalar::<f32>()?);
            let g = loss.backward()?;
            for (s, v) in acc.iter_mut().zip(&vars) {
                if let Some(gg) = g.get(v.as_tensor()) {
                    let gg = gg.detach();
                    *s = Some(match s.take() {
                        Some(a) => (a + gg)?,
                        None => gg,
                    });
                }
            }
            if losses.len() == 8 || bi + 1 == order.len().div_ceil(64) {
                let gn: f32 = acc
                    .iter()
                    .flatten()
                    .map(|t| {
                        t.sqr()
                            .unwrap()
                            .sum_all()
                            .unwrap()
                            .to_scalar::<f32>()
                            .unwrap()
                    })
                    .sum::<f32>()
                    .sqrt();
                let per: Vec<String> = acc
                    .iter()
                    .flatten()
                    .map(|t| {
                        format!(
                            "{:.2e}",
                            t.abs()
                                .unwrap()
                                .flatten_all()
                                .unwrap()
                                .max(0)
                                .unwrap()
                                .to_scalar::<f32>()
                                .unwrap()
                        )
                    })
                    .collect();
                opt.step(&acc)?;
                acc.iter_mut().for_each(|a| *a = None);
                let e = model.embed(&xp, false)?;
                let norms = e.sqr()?.sum(1)?.sqrt()?;
                let (mn, mx) = (
                    norms.min(0)?.to_scalar::<f32>()?,
                    norms.max(0)?.to_scalar::<f32>()?,
                );
                let l = losses.iter().sum::<f32>() / losses.len() as f32;
                if step % 20 == 0 || l > 2.0 || step >= 395 && step <= 410 {
                    println!(
                        "step {step} epoch {epoch} loss {l:.4} gradnorm {gn:.3e} emb norm [{mn:.3e}, {mx:.3e}] maxabs {}",
                        per.join(" ")
                    );
                }
                losses.clear();
                step += 1;
                if l > 4.8 {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}
