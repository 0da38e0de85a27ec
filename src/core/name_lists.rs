//! Node-name lists remembered with their slots, so a request naming the same nodes as the last
//! one resolves them by comparing names in order instead of hashing each one.
//!
//! kube-scheduler sends filter the same node list, in the same order, for every replica of a
//! Deployment, and prioritize the survivors of that filter. Hashing 15,000 names and probing a
//! table that no longer fits the CPU caches was half of a request's time. A remembered list is
//! walked beside the request's: a name equal to the remembered one at the same place (or a few
//! places further, for nodes that dropped out) takes the remembered slot; any other name is
//! looked up by hash. Slots stay valid until a node is removed (removal moves a slot), which the
//! inventory counts as a new *layout*; lists of an older layout are not used.
//!
//! Bounded: [`NAME_LISTS`] lists, each as long as one request's list.

use std::sync::{Arc, Mutex};

/// How many lists are remembered (filter's and prioritize's; the least recently used goes).
pub const NAME_LISTS: usize = 2;

/// How far ahead in a remembered list a name is looked for when the lists differ (nodes that
/// dropped out between filter and prioritize, or between two replicas).
const LOOKAHEAD: usize = 4;

/// A slot that was not in the inventory when the list was remembered.
const ABSENT: u32 = u32::MAX;

/// One remembered list: the names back to back, where each ends, and its slot.
#[derive(Debug, Default)]
struct NameList {
    layout: u64,
    bytes: Vec<u8>,
    ends: Vec<u32>,
    slots: Vec<u32>,
}

impl NameList {
    fn name(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.bytes[start..self.ends[i] as usize]
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn first(&self) -> Option<&[u8]> {
        (self.len() > 0).then(|| self.name(0))
    }
}

/// The remembered lists. Requests under the inventory's read lock share them; the lock is held
/// only to pick a list and to store a new one.
#[derive(Debug, Default)]
pub struct NameLists {
    lists: Mutex<Vec<Arc<NameList>>>,
}

impl Clone for NameLists {
    /// A copy of an inventory starts with no lists (its slots are its own).
    fn clone(&self) -> Self {
        NameLists::default()
    }
}

impl NameLists {
    /// The slot of every name (`None`: not in the inventory). `layout` is the inventory's
    /// current layout; `lookup` finds a slot by hash.
    pub fn resolve<N: AsRef<str>>(
        &self,
        names: &[N],
        layout: u64,
        lookup: impl Fn(&str) -> Option<u32>,
    ) -> Vec<Option<u32>> {
        let remembered = names
            .first()
            .and_then(|first| self.matching(first.as_ref(), names.len(), layout));
        let mut slots = Vec::with_capacity(names.len());
        let mut same = remembered.as_ref().is_some_and(|r| r.len() == names.len());
        let mut j = 0;
        for (i, name) in names.iter().enumerate() {
            let name = name.as_ref();
            let found = remembered
                .as_deref()
                .and_then(|r| find_ahead(r, j, name.as_bytes()));
            let slot = match found {
                Some((k, slot)) => {
                    same &= k == i;
                    j = k + 1;
                    if slot == ABSENT {
                        lookup(name)
                    } else {
                        Some(slot)
                    }
                }
                None => {
                    same = false;
                    lookup(name)
                }
            };
            slots.push(slot);
        }
        match remembered {
            Some(list) if same => self.touch(&list),
            _ => self.remember(names, &slots, layout),
        }
        slots
    }

    /// The remembered list of `layout` that starts with `first`, preferring one of `len` names.
    fn matching(&self, first: &str, len: usize, layout: u64) -> Option<Arc<NameList>> {
        let lists = self.lock();
        let starts = |l: &&Arc<NameList>| l.layout == layout && l.first() == Some(first.as_bytes());
        lists
            .iter()
            .rev()
            .filter(starts)
            .find(|l| l.len() == len)
            .or_else(|| lists.iter().rev().find(starts))
            .cloned()
    }

    /// Marks `list` as the most recently used, so filter's full list outlives the changing
    /// survivor lists of prioritize.
    fn touch(&self, list: &Arc<NameList>) {
        let mut lists = self.lock();
        if let Some(i) = lists.iter().position(|l| Arc::ptr_eq(l, list)) {
            let used = lists.remove(i);
            lists.push(used);
        }
    }

    fn remember<N: AsRef<str>>(&self, names: &[N], slots: &[Option<u32>], layout: u64) {
        let total: usize = names.iter().map(|n| n.as_ref().len()).sum();
        let Ok(_) = u32::try_from(total) else {
            return;
        };
        let mut list = NameList {
            layout,
            bytes: Vec::with_capacity(total),
            ends: Vec::with_capacity(names.len()),
            slots: Vec::with_capacity(names.len()),
        };
        for (name, slot) in names.iter().zip(slots) {
            list.bytes.extend_from_slice(name.as_ref().as_bytes());
            list.ends.push(list.bytes.len() as u32);
            list.slots.push(slot.unwrap_or(ABSENT));
        }
        let mut lists = self.lock();
        lists.retain(|l| l.layout == layout && !(l.len() == list.len() && l.bytes == list.bytes));
        lists.push(Arc::new(list));
        if lists.len() > NAME_LISTS {
            let excess = lists.len() - NAME_LISTS;
            lists.drain(..excess);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<NameList>>> {
        // A panic while the lock was held leaves at worst lists that miss: keep using them.
        self.lists
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Where `name` is in `list` at `from` or up to [`LOOKAHEAD`] places further, with its slot.
fn find_ahead(list: &NameList, from: usize, name: &[u8]) -> Option<(usize, u32)> {
    (from..list.len().min(from + 1 + LOOKAHEAD))
        .find(|&k| same_name(list.name(k), name))
        .map(|k| (k, list.slots[k]))
}

/// `a == b`, without a `memcmp` call for names of 8 to 16 bytes (most node names): two
/// overlapping 8-byte words cover every byte.
fn same_name(a: &[u8], b: &[u8]) -> bool {
    let len = a.len();
    if len != b.len() {
        return false;
    }
    if !(8..=16).contains(&len) {
        return a == b;
    }
    let word = |s: &[u8], at: usize| u64::from_ne_bytes(s[at..at + 8].try_into().unwrap_or([0; 8]));
    word(a, 0) == word(b, 0) && word(a, len - 8) == word(b, len - 8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn table(names: &[&str]) -> HashMap<String, u32> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), i as u32))
            .collect()
    }

    #[test]
    fn names_compare_as_bytes_do() {
        let names: Vec<Vec<u8>> = (0..=20)
            .map(|len| (0..len).map(|i| b'a' + i as u8).collect())
            .collect();
        for a in &names {
            for b in &names {
                assert_eq!(same_name(a, b), a == b);
            }
            // One byte different anywhere, same length.
            for at in 0..a.len() {
                let mut c = a.clone();
                c[at] ^= 1;
                assert!(!same_name(a, &c), "{a:?} {at}");
            }
        }
    }

    #[test]
    fn every_name_gets_the_slot_a_hash_lookup_would_give() {
        let all: Vec<String> = (0..40).map(|i| format!("node-{i}")).collect();
        let slots = table(&all.iter().map(String::as_str).collect::<Vec<_>>());
        let lookup = |n: &str| slots.get(n).copied();
        let lists = NameLists::default();
        // The full list, then survivors (some dropped), then with unknown and reordered names,
        // then the full list again: each resolved exactly as by hash.
        let full: Vec<&str> = all.iter().map(String::as_str).collect();
        let survivors: Vec<&str> = full.iter().copied().filter(|n| !n.ends_with('3')).collect();
        let mut odd: Vec<&str> = survivors.clone();
        odd.insert(5, "unknown");
        odd.swap(10, 20);
        odd.reverse();
        for names in [&full, &survivors, &full, &odd, &survivors, &full, &full] {
            let expected: Vec<Option<u32>> = names.iter().map(|n| lookup(n)).collect();
            assert_eq!(lists.resolve(names, 1, lookup), expected);
        }
        assert!(lists.lock().len() <= NAME_LISTS);
    }

    #[test]
    fn the_list_in_use_outlives_changing_survivor_lists() {
        let lists = NameLists::default();
        let full = ["a", "b", "c", "d"];
        let lookup = |n: &str| Some(u32::from(n.as_bytes()[0]));
        lists.resolve(&full, 1, lookup);
        for survivors in [&["a", "b", "c"][..], &["a", "b"], &["a"]] {
            lists.resolve(&full, 1, lookup);
            lists.resolve(survivors, 1, lookup);
            let held = lists.lock();
            assert_eq!(held.len(), NAME_LISTS);
            assert!(
                held.iter().any(|l| l.len() == full.len()),
                "filter's list kept"
            );
        }
    }

    #[test]
    fn lists_of_an_older_layout_are_not_used() {
        let lists = NameLists::default();
        let names = ["a", "b", "c"];
        assert_eq!(
            lists.resolve(&names, 1, |n| Some(n.as_bytes()[0] as u32)),
            vec![Some(97), Some(98), Some(99)]
        );
        // Node "b" removed: the layout moved, slots changed.
        let moved = |n: &str| match n {
            "a" => Some(0),
            "c" => Some(1),
            _ => None,
        };
        assert_eq!(
            lists.resolve(&names, 2, moved),
            vec![Some(0), None, Some(1)]
        );
    }

    #[test]
    fn a_name_absent_when_remembered_is_looked_up_again() {
        let lists = NameLists::default();
        let names = ["a", "new"];
        assert_eq!(
            lists.resolve(&names, 1, |n| (n == "a").then_some(0)),
            vec![Some(0), None]
        );
        // "new" was added (a new slot; no layout change).
        assert_eq!(
            lists.resolve(&names, 1, |n| Some(if n == "a" { 0 } else { 1 })),
            vec![Some(0), Some(1)]
        );
    }
}
