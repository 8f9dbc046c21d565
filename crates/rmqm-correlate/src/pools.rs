//! The groups of pairs a correlation is computed on: each (downstream, task) alone, and pools
//! named for what they hold.
//!
//! - `paper/knn`, `paper/linear`, `paper/both`: exactly the paper's sets and tasks. k-NN is 1-NN
//!   (cosine) on Omniglot, KMNIST, Caltech-101 and CIFAR-100; the linear probe on the same sets
//!   except Omniglot (the paper leaves it out); both is the two together. The paper's numbers
//!   (r = 0.75, 0.78, 0.72, the ablation, the fitted weights) are compared with these only.
//! - `all/knn`, `all/linear`, `all/both`: every set and task the inputs hold (Fashion-MNIST, k > 1,
//!   Euclidean k-NN, ...), less any `--exclude-task`.

use crate::analysis::Pair;
use std::collections::BTreeMap;
use std::fmt;

/// The downstream sets of the paper's k-NN pool.
pub const PAPER_KNN_SETS: [&str; 4] = ["omniglot", "kmnist", "caltech101", "cifar100"];
/// The downstream sets of the paper's linear-probe pool (Omniglot left out, as the paper did).
pub const PAPER_LINEAR_SETS: [&str; 3] = ["kmnist", "caltech101", "cifar100"];
/// The k-NN task of the paper's pool: 1-NN on cosine distance.
pub const PAPER_KNN_TASK: &str = "knn-1";

/// Which pairs a pool holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Exactly the paper's sets and tasks.
    Paper,
    /// Every set and task.
    All,
}

/// Which tasks a pool holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PoolTasks {
    /// k-NN tasks.
    Knn,
    /// The linear probe.
    Linear,
    /// Both.
    Both,
}

/// A pool: a scope and its tasks, named `paper/knn`, `all/both`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pool {
    /// Paper or all.
    pub scope: Scope,
    /// k-NN, linear or both.
    pub tasks: PoolTasks,
}

impl Pool {
    /// Every pool, paper ones first.
    pub const ALL: [Pool; 6] = [
        Pool::new(Scope::Paper, PoolTasks::Knn),
        Pool::new(Scope::Paper, PoolTasks::Linear),
        Pool::new(Scope::Paper, PoolTasks::Both),
        Pool::new(Scope::All, PoolTasks::Knn),
        Pool::new(Scope::All, PoolTasks::Linear),
        Pool::new(Scope::All, PoolTasks::Both),
    ];

    /// A pool from its parts.
    pub const fn new(scope: Scope, tasks: PoolTasks) -> Self {
        Pool { scope, tasks }
    }

    /// Whether a pair on `downstream` / `task` belongs to this pool (`excluded`: the
    /// `downstream/task` names left out of the all-tasks pools).
    pub fn holds(&self, downstream: &str, task: &str, excluded: &[String]) -> bool {
        let knn = task.starts_with("knn");
        let linear = task == "linear";
        let kind_fits = match self.tasks {
            PoolTasks::Knn => knn,
            PoolTasks::Linear => linear,
            PoolTasks::Both => knn || linear,
        };
        if !kind_fits {
            return false;
        }
        match self.scope {
            Scope::Paper => {
                (task == PAPER_KNN_TASK && PAPER_KNN_SETS.contains(&downstream))
                    || (linear && PAPER_LINEAR_SETS.contains(&downstream))
            }
            Scope::All => !excluded
                .iter()
                .any(|e| *e == format!("{downstream}/{task}")),
        }
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = match self.scope {
            Scope::Paper => "paper",
            Scope::All => "all",
        };
        let tasks = match self.tasks {
            PoolTasks::Knn => "knn",
            PoolTasks::Linear => "linear",
            PoolTasks::Both => "both",
        };
        write!(f, "{scope}/{tasks}")
    }
}

/// What a group of pairs is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupKind {
    /// One downstream set and task.
    Task {
        /// Downstream dataset.
        downstream: String,
        /// Task name.
        task: String,
    },
    /// A pool.
    Pool(Pool),
}

/// A named group of pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// What it is.
    pub kind: GroupKind,
    /// Indices into the pairs.
    pub members: Vec<usize>,
}

impl Group {
    /// `downstream/task` or the pool's name.
    pub fn name(&self) -> String {
        match &self.kind {
            GroupKind::Task { downstream, task } => format!("{downstream}/{task}"),
            GroupKind::Pool(p) => p.to_string(),
        }
    }

    /// The pool, when the group is one.
    pub fn pool(&self) -> Option<Pool> {
        match self.kind {
            GroupKind::Pool(p) => Some(p),
            GroupKind::Task { .. } => None,
        }
    }
}

/// Every (downstream, task) group, then every non-empty pool.
pub fn groups(pairs: &[Pair], excluded: &[String]) -> Vec<Group> {
    let mut tasks: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (i, p) in pairs.iter().enumerate() {
        tasks
            .entry((p.downstream.clone(), p.task.clone()))
            .or_default()
            .push(i);
    }
    let mut out: Vec<Group> = tasks
        .into_iter()
        .map(|((downstream, task), members)| Group {
            kind: GroupKind::Task { downstream, task },
            members,
        })
        .collect();
    for pool in Pool::ALL {
        let members: Vec<usize> = (0..pairs.len())
            .filter(|&i| pool.holds(&pairs[i].downstream, &pairs[i].task, excluded))
            .collect();
        if !members.is_empty() {
            out.push(Group {
                kind: GroupKind::Pool(pool),
                members,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_hold_exactly_their_sets_and_tasks() {
        let paper_knn = Pool::new(Scope::Paper, PoolTasks::Knn);
        let paper_linear = Pool::new(Scope::Paper, PoolTasks::Linear);
        let paper_both = Pool::new(Scope::Paper, PoolTasks::Both);
        let all_both = Pool::new(Scope::All, PoolTasks::Both);
        assert!(paper_knn.holds("omniglot", "knn-1", &[]));
        assert!(paper_knn.holds("cifar100", "knn-1", &[]));
        assert!(!paper_knn.holds("kmnist", "knn-5", &[]));
        assert!(!paper_knn.holds("kmnist", "knn-1-euclidean", &[]));
        assert!(!paper_knn.holds("fashion", "knn-1", &[]));
        assert!(!paper_knn.holds("kmnist", "linear", &[]));
        assert!(paper_linear.holds("kmnist", "linear", &[]));
        assert!(!paper_linear.holds("omniglot", "linear", &[]));
        assert!(!paper_linear.holds("fashion", "linear", &[]));
        assert!(paper_both.holds("caltech101", "linear", &[]));
        assert!(paper_both.holds("omniglot", "knn-1", &[]));
        assert!(all_both.holds("fashion", "knn-5", &[]));
        assert!(!all_both.holds("omniglot", "linear", &["omniglot/linear".into()]));
        assert_eq!(paper_both.to_string(), "paper/both");
        assert_eq!(Pool::ALL[5].to_string(), "all/both");
    }
}
