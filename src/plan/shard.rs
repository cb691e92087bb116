//! Splitting a plan between CI runners: `--shard I/N`.
//!
//! The roots (the targets asked for) are dealt out so that `N` runners
//! share the work, the same way on every runner: a runner computes the
//! whole plan, then keeps its share. Every derivation of the plan is
//! **owned** by exactly one shard: the shard of the first root (in dealing
//! order) whose closure holds it. A runner builds its roots' closures, so a
//! dependency shared with another shard's roots (the Debian packages every
//! host uses) is built, or substituted from a binary cache, by both; only
//! its owner is meant to push it.
//!
//! Dealing is "longest first": roots by estimated cost of the derivations
//! they add (highest first, then by target name), each to the shard with the
//! least estimated work so far (then the lowest index). The estimate is per
//! builder ([`cost`]): an image build counts much more than a download.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use super::{Derivation, DrvHash, Plan};

/// `I/N`: shard `I` (from 1) of `N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardSpec {
    pub index: usize,
    pub count: usize,
}

impl FromStr for ShardSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<ShardSpec, String> {
        let usage = || format!("`{text}` is not a shard: expected I/N with 1 ≤ I ≤ N, like 2/4");
        let (index, count) = text.split_once('/').ok_or_else(usage)?;
        let index: usize = index.trim().parse().map_err(|_| usage())?;
        let count: usize = count.trim().parse().map_err(|_| usage())?;
        if index == 0 || count == 0 || index > count {
            return Err(usage());
        }
        Ok(ShardSpec { index, count })
    }
}

impl fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// One runner's share.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shard {
    /// From 1.
    pub index: usize,
    /// `(target, derivation)`, in the plan's order.
    pub roots: Vec<(String, DrvHash)>,
    /// The derivations this shard owns.
    pub owned: BTreeSet<DrvHash>,
    /// The estimated cost of `owned`.
    pub cost: u64,
}

/// The estimated work of one derivation, by builder: building an LXC
/// template or a VM image dwarfs everything else; an overlay or a package
/// index is a little work; a download or a copied source almost none.
pub fn cost(derivation: &Derivation) -> u64 {
    match derivation.builder.as_str() {
        crate::builders::lxc::BUILDER | crate::builders::vm::BUILDER => 100,
        crate::builders::fetch::BUILDER | "source" => 1,
        crate::builders::stack::BUILDER => 2,
        _ => 5,
    }
}

impl Plan {
    /// `root` and every derivation it depends on.
    pub fn closure(&self, root: &DrvHash) -> BTreeSet<DrvHash> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![root.clone()];
        while let Some(hash) = stack.pop() {
            if !seen.insert(hash.clone()) {
                continue;
            }
            if let Some(derivation) = self.derivations.get(&hash) {
                stack.extend(derivation.inputs.values().map(|i| i.drv().clone()));
            }
        }
        seen
    }

    /// Keep only `roots` and their closures.
    pub fn keep_roots(&mut self, roots: &[(String, DrvHash)]) {
        let mut keep = BTreeSet::new();
        for (_, root) in roots {
            keep.extend(self.closure(root));
        }
        self.derivations.retain(|hash, _| keep.contains(hash));
        self.outputs.retain(|hash, _| keep.contains(hash));
        self.roots.retain(|root| roots.contains(root));
    }

    /// The plan dealt into `count` shards (see the module docs).
    pub fn shards(&self, count: usize) -> Vec<Shard> {
        let count = count.max(1);
        let mut shards: Vec<Shard> = (1..=count)
            .map(|index| Shard {
                index,
                ..Shard::default()
            })
            .collect();
        // Roots that are the same derivation go together.
        let mut groups: BTreeMap<&DrvHash, Vec<&(String, DrvHash)>> = BTreeMap::new();
        for root in &self.roots {
            groups.entry(&root.1).or_default().push(root);
        }
        let closures: BTreeMap<&DrvHash, BTreeSet<DrvHash>> = groups
            .keys()
            .map(|hash| (*hash, self.closure(hash)))
            .collect();
        let weight = |set: &BTreeSet<DrvHash>| -> u64 {
            set.iter()
                .filter_map(|h| self.derivations.get(h))
                .map(cost)
                .sum()
        };
        let mut order: Vec<&DrvHash> = groups.keys().copied().collect();
        order.sort_by(|a, b| {
            weight(&closures[b])
                .cmp(&weight(&closures[a]))
                .then_with(|| groups[a][0].0.cmp(&groups[b][0].0))
        });
        let mut owned: BTreeSet<DrvHash> = BTreeSet::new();
        for hash in order {
            let new: BTreeSet<DrvHash> = closures[hash].difference(&owned).cloned().collect();
            let added = weight(&new);
            let shard = shards
                .iter_mut()
                .min_by_key(|s| (s.cost, s.index))
                .expect("at least one shard");
            shard
                .roots
                .extend(groups[hash].iter().map(|r| (*r).clone()));
            shard.cost += added;
            owned.extend(new.iter().cloned());
            shard.owned.extend(new);
        }
        // Derivations no root reaches (none today): the first shard's.
        for hash in self.derivations.keys() {
            if !owned.contains(hash) {
                shards[0].cost += cost(&self.derivations[hash]);
                shards[0].owned.insert(hash.clone());
            }
        }
        for shard in &mut shards {
            shard
                .roots
                .sort_by_key(|r| self.roots.iter().position(|p| p == r));
        }
        shards
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_specs_parse_and_refuse_nonsense() {
        assert_eq!(
            "2/4".parse::<ShardSpec>().unwrap(),
            ShardSpec { index: 2, count: 4 }
        );
        assert_eq!("1/1".parse::<ShardSpec>().unwrap().to_string(), "1/1");
        for bad in ["0/2", "3/2", "1/0", "x/2", "2", "1/2/3", ""] {
            let err = bad.parse::<ShardSpec>().unwrap_err();
            assert!(err.contains("I/N"), "{bad}: {err}");
        }
    }
}
