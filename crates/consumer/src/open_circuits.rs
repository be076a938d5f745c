//! The open circuits one consumer knows of (see `circuit`): plain data, so the context can hold
//! it without depending on the breaker's logic.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use regrelay_history::target_health::OpenCircuit;

/// The open circuits, by policy and target fingerprint.
#[derive(Default)]
pub(crate) struct Circuits {
    open: RwLock<HashMap<(i64, String), OpenCircuit>>,
}

impl Circuits {
    pub(crate) fn get(&self, policy_id: i64, fingerprint: &str) -> Option<OpenCircuit> {
        self.open
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(policy_id, fingerprint.to_owned()))
            .cloned()
    }

    pub(crate) fn replace(&self, open: Vec<OpenCircuit>) -> usize {
        let map: HashMap<_, _> = open
            .into_iter()
            .map(|c| ((c.policy_id, c.target_fingerprint.clone()), c))
            .collect();
        let n = map.len();
        *self.open.write().unwrap_or_else(PoisonError::into_inner) = map;
        n
    }
}
