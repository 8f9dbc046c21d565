//! The vocabulary every rmqm tool shares, without candle: architectures, training methods,
//! optimizers, alterations (walks), conventions and probe tasks. Each is an enum with one derive
//! style, [`vocabulary!`]: its names on the command line (clap's `ValueEnum`, so `--help` lists
//! them), in metadata and in tables (`Display` and `FromStr`, the same names).

use std::fmt;
use std::str::FromStr;

/// Defines a vocabulary enum: variants with their names, `ALL`, `name()`, `Display`, `FromStr`
/// (an unknown name lists the known ones) and clap's `ValueEnum`.
#[macro_export]
macro_rules! vocabulary {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident => $text:expr),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $variant),+ }
        impl $name {
            /// Every value, in a stable order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The name used on the command line, in metadata and in tables.
            pub fn name(self) -> &'static str { match self { $($name::$variant => $text),+ } }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.name()) }
        }
        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $name::ALL.iter().copied().find(|v| v.name() == s).ok_or_else(|| {
                    let names: Vec<&str> = $name::ALL.iter().map(|v| v.name()).collect();
                    format!("unknown {} {s:?}; known: {}", stringify!($name).to_lowercase(), names.join(", "))
                })
            }
        }
        impl clap::ValueEnum for $name {
            fn value_variants<'a>() -> &'a [Self] { $name::ALL }
            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(clap::builder::PossibleValue::new(self.name()))
            }
        }
    };
}

vocabulary!(
    /// Encoder architectures.
    Arch {
        /// conv 6@5x5, pool, conv 16@5x5, pool, MLP 512-512-512-dim (default for 28x28).
        Lenet5 => "lenet5",
        /// conv 6@5x5 (padding 2), pool, conv 16@5x5, pool, 120, 84, dim.
        Lenet5Classic => "lenet5-classic",
        /// CIFAR ResNet-18 (3x3 stem, no max pool), average pool, MLP 512-1024-1024-dim.
        Resnet18 => "resnet18",
    }
);

vocabulary!(
    /// Training methods.
    Method {
        /// Cross-entropy through a classifier head.
        CrossEntropy => "cross-entropy",
        /// Cross-entropy plus a semihard triplet loss on the embedding, weights 1:1.
        TripletEntropy => "triplet-entropy",
        /// Semihard triplet loss with triplets mined from labels in the batch.
        TripletSupervised => "triplet-supervised",
        /// Semihard triplet loss on two augmented views (positive = the other view).
        TripletSs => "triplet-ss",
        /// SimCLR's NT-Xent over 2N augmented views.
        Ntxent => "ntxent",
    }
);

impl Method {
    /// True when the method trains a classifier head (and needs labels for it).
    pub fn has_head(self) -> bool {
        matches!(self, Method::CrossEntropy | Method::TripletEntropy)
    }
    /// True when the method uses two augmented views of each image.
    pub fn uses_views(self) -> bool {
        matches!(self, Method::TripletSs | Method::Ntxent)
    }
}

vocabulary!(
    /// Optimizers.
    OptimizerKind {
        /// SGD with Nesterov momentum 0.9 (PyTorch's update).
        Sgd => "sgd",
        /// Adam (PyTorch defaults), no weight decay.
        Adam => "adam",
    }
);

vocabulary!(
    /// The walks `alter` writes (recorded as `rmqm.alteration`).
    Alteration {
        /// White noise of growing variance.
        Noise => "noise",
        /// PGD with the model's own loss (the paper's continuing walk).
        Pgd => "pgd",
        /// The authors' PGD walk: restarts, radius 0.3, their step sizes.
        PgdReference => "pgd-reference",
        /// Views of the training augmentation (LiDAR's input).
        Augment => "augment",
        /// The clean images alone.
        Clean => "clean",
    }
);

vocabulary!(
    /// Which equations turn distances into D_RC, P_RC and RMQM.
    Convention {
        /// The printed equations (2)-(6) of the paper.
        Paper => "paper",
        /// As the authors' public code computes it (pandas pct_change; distance term adds mean dp).
        Reference => "reference",
    }
);

vocabulary!(
    /// Downstream tasks of `probe` (recorded in the `task` column).
    TaskKind {
        /// k nearest neighbours.
        Knn => "knn",
        /// Multinomial logistic regression on standardised embeddings.
        Linear => "linear",
    }
);

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_known() {
        for m in Method::ALL {
            assert_eq!(m.name().parse::<Method>().unwrap(), *m);
            assert_eq!(m.to_possible_value().unwrap().get_name(), m.name());
        }
        assert_eq!(
            "pgd-reference".parse::<Alteration>(),
            Ok(Alteration::PgdReference)
        );
        let e = "sgdd".parse::<OptimizerKind>().unwrap_err();
        assert!(e.contains("sgd, adam"), "{e}");
        assert_eq!(Convention::Paper.to_string(), "paper");
        assert!(Method::TripletSs.uses_views() && Method::TripletEntropy.has_head());
    }
}
