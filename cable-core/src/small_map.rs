//! A map by identifier for a connection's subscriptions: most connections
//! have one or two, and an empty `HashMap` grown for one entry takes some
//! 120 bytes where a vector takes 24. Past [`FEW`] entries it is a
//! `HashMap`, so a connection with thousands of subscriptions still finds
//! each one at once.

use std::collections::HashMap;
use std::sync::Arc;

/// Most entries kept in a vector (a linear search of a few is faster than
/// hashing anyway).
const FEW: usize = 8;

#[derive(Debug)]
pub(crate) enum SmallMap<V> {
    Few(Vec<(Arc<str>, V)>),
    Many(HashMap<Arc<str>, V>),
}

impl<V> Default for SmallMap<V> {
    fn default() -> Self {
        SmallMap::Few(Vec::new())
    }
}

impl<V> SmallMap<V> {
    pub(crate) fn len(&self) -> usize {
        match self {
            SmallMap::Few(v) => v.len(),
            SmallMap::Many(m) => m.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn get(&self, key: &str) -> Option<&V> {
        match self {
            SmallMap::Few(v) => v.iter().find(|(k, _)| **k == *key).map(|(_, v)| v),
            SmallMap::Many(m) => m.get(key),
        }
    }

    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        match self {
            SmallMap::Few(v) => v.iter_mut().find(|(k, _)| **k == *key).map(|(_, v)| v),
            SmallMap::Many(m) => m.get_mut(key),
        }
    }

    pub(crate) fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Inserts or replaces `key`'s value; gives back the one it replaced.
    pub(crate) fn insert(&mut self, key: Arc<str>, value: V) -> Option<V> {
        match self {
            SmallMap::Few(v) => {
                if let Some(slot) = v.iter_mut().find(|(k, _)| **k == *key) {
                    return Some(std::mem::replace(&mut slot.1, value));
                }
                if v.len() < FEW {
                    // Exact growth: the vector lives as long as the connection.
                    v.reserve_exact(1);
                    v.push((key, value));
                } else {
                    let mut m: HashMap<Arc<str>, V> = v.drain(..).collect();
                    m.insert(key, value);
                    *self = SmallMap::Many(m);
                }
                None
            }
            SmallMap::Many(m) => m.insert(key, value),
        }
    }

    pub(crate) fn remove(&mut self, key: &str) -> Option<V> {
        match self {
            SmallMap::Few(v) => {
                let i = v.iter().position(|(k, _)| **k == *key)?;
                // Order kept: iteration follows the subscriptions' order.
                Some(v.remove(i).1)
            }
            SmallMap::Many(m) => m.remove(key),
        }
    }

    pub(crate) fn values(&self) -> Box<dyn Iterator<Item = &V> + '_> {
        match self {
            SmallMap::Few(v) => Box::new(v.iter().map(|(_, v)| v)),
            SmallMap::Many(m) => Box::new(m.values()),
        }
    }

    pub(crate) fn values_mut(&mut self) -> Box<dyn Iterator<Item = &mut V> + '_> {
        match self {
            SmallMap::Few(v) => Box::new(v.iter_mut().map(|(_, v)| v)),
            SmallMap::Many(m) => Box::new(m.values_mut()),
        }
    }

    /// Takes every entry out; the map is empty (and small) after.
    pub(crate) fn drain(&mut self) -> Vec<(Arc<str>, V)> {
        match std::mem::take(self) {
            SmallMap::Few(v) => v,
            SmallMap::Many(m) => m.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_map_below_and_past_the_vector_size() {
        let mut m = SmallMap::default();
        let mut model = HashMap::new();
        // Keys 0..40 in an order that mixes inserts, replaces and removes.
        for step in 0u32..400 {
            let key: Arc<str> = format!("k{}", (step * 7) % 40).into();
            match step % 5 {
                0..=2 => assert_eq!(m.insert(key.clone(), step), model.insert(key, step)),
                3 => assert_eq!(m.remove(&key), model.remove(&key)),
                _ => assert_eq!(m.get(&key), model.get(&key)),
            }
            assert_eq!(m.len(), model.len());
            assert_eq!(m.is_empty(), model.is_empty());
            let mut got: Vec<u32> = m.values().copied().collect();
            let mut want: Vec<u32> = model.values().copied().collect();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want);
        }
        assert!(matches!(m, SmallMap::Many(_)));
        for v in m.values_mut() {
            *v += 1;
        }
        let mut drained: Vec<u32> = m.drain().into_iter().map(|(_, v)| v).collect();
        drained.sort_unstable();
        let mut want: Vec<u32> = model.values().map(|v| v + 1).collect();
        want.sort_unstable();
        assert_eq!(drained, want);
        assert!(m.is_empty() && matches!(m, SmallMap::Few(_)));
    }

    #[test]
    fn a_few_entries_keep_their_order_and_no_spare_room() {
        let mut m = SmallMap::default();
        for k in ["a", "b", "c"] {
            m.insert(k.into(), k.to_owned());
        }
        m.remove("b");
        assert_eq!(m.values().cloned().collect::<Vec<_>>(), ["a", "c"]);
        let SmallMap::Few(v) = &m else {
            panic!("three entries are kept in a vector")
        };
        assert_eq!(v.capacity(), 3);
    }
}
