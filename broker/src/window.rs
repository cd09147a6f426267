//! A map from offsets to entries for a mostly dense range of offsets.
//!
//! A group's window contains the loaded offsets of a partition from the oldest unsettled one to
//! the newest loaded one. Offsets arrive in order and leave mostly from the front, so a ring
//! buffer indexed by `offset - base` serves every lookup in constant time. Offsets that were
//! removed from the middle, or skipped, leave empty places until the front passes them.

use std::collections::VecDeque;

pub(crate) struct Window<T> {
    /// Offset of `places[0]`.
    base: u64,
    places: VecDeque<Option<T>>,
    /// Number of occupied places.
    len: usize,
}

impl<T> Default for Window<T> {
    fn default() -> Self {
        Window {
            base: 0,
            places: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> Window<T> {
    /// Returns the number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn get(&self, offset: u64) -> Option<&T> {
        let index = self.index(offset)?;
        self.places.get(index)?.as_ref()
    }

    pub fn get_mut(&mut self, offset: u64) -> Option<&mut T> {
        let index = self.index(offset)?;
        self.places.get_mut(index)?.as_mut()
    }

    /// Stores `value` at `offset`, replacing an entry that is already there.
    pub fn insert(&mut self, offset: u64, value: T) {
        if self.places.is_empty() {
            self.base = offset;
        }
        if offset < self.base {
            for _ in offset..self.base {
                self.places.push_front(None);
            }
            self.base = offset;
        }
        let index = (offset - self.base) as usize;
        while self.places.len() <= index {
            self.places.push_back(None);
        }
        if self.places[index].replace(value).is_none() {
            self.len += 1;
        }
    }

    pub fn remove(&mut self, offset: u64) -> Option<T> {
        let index = self.index(offset)?;
        let removed = self.places.get_mut(index)?.take()?;
        self.len -= 1;
        self.trim();
        Some(removed)
    }

    /// Returns the lowest offset with an entry.
    pub fn first_offset(&self) -> Option<u64> {
        // `trim` keeps an entry in the front place whenever the window is not empty.
        self.places.front()?.as_ref()?;
        Some(self.base)
    }

    /// Removes entries from the front while `remove` returns true for them.
    pub fn pop_front_while(&mut self, mut remove: impl FnMut(&T) -> bool) {
        while let Some(front) = self.places.front() {
            match front {
                Some(value) if !remove(value) => break,
                Some(_) => self.len -= 1,
                None => {}
            }
            self.places.pop_front();
            self.base += 1;
        }
        self.trim();
    }

    /// Iterates over the entries in offset order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        let base = self.base;
        self.places
            .iter()
            .enumerate()
            .filter_map(move |(index, place)| Some((base + index as u64, place.as_ref()?)))
    }

    /// Iterates mutably over the entries in offset order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut T)> {
        let base = self.base;
        self.places
            .iter_mut()
            .enumerate()
            .filter_map(move |(index, place)| Some((base + index as u64, place.as_mut()?)))
    }

    /// Iterates over the entries below `end` in offset order.
    pub fn below(&self, end: u64) -> impl Iterator<Item = (u64, &T)> {
        self.iter().take_while(move |(offset, _)| *offset < end)
    }

    fn index(&self, offset: u64) -> Option<usize> {
        let index = offset.checked_sub(self.base)?;
        usize::try_from(index).ok()
    }

    /// Drops empty places at both ends, so the front place always contains an entry.
    fn trim(&mut self) {
        while matches!(self.places.front(), Some(None)) {
            self.places.pop_front();
            self.base += 1;
        }
        while matches!(self.places.back(), Some(None)) {
            self.places.pop_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::Window;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u32),
        Remove(u64),
        PopFrontBelow(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..64, any::<u32>()).prop_map(|(offset, value)| Op::Insert(offset, value)),
            2 => (0u64..64).prop_map(Op::Remove),
            1 => any::<u32>().prop_map(Op::PopFrontBelow),
        ]
    }

    proptest! {
        /// Every sequence of operations leaves the window equal to a `BTreeMap` given the same
        /// operations.
        #[test]
        fn window_matches_btree_map(ops in proptest::collection::vec(op(), 0..200)) {
            let mut window = Window::default();
            let mut model = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(offset, value) => {
                        window.insert(offset, value);
                        model.insert(offset, value);
                    }
                    Op::Remove(offset) => {
                        prop_assert_eq!(window.remove(offset), model.remove(&offset));
                    }
                    Op::PopFrontBelow(limit) => {
                        window.pop_front_while(|value| *value < limit);
                        while let Some(entry) = model.first_entry() {
                            if *entry.get() >= limit {
                                break;
                            }
                            entry.remove();
                        }
                    }
                }
                prop_assert_eq!(window.len(), model.len());
                prop_assert_eq!(window.first_offset(), model.keys().next().copied());
                let listed: Vec<(u64, u32)> = window.iter().map(|(o, v)| (o, *v)).collect();
                let expected: Vec<(u64, u32)> = model.iter().map(|(o, v)| (*o, *v)).collect();
                prop_assert_eq!(&listed, &expected);
                let below: Vec<u64> = window.below(32).map(|(o, _)| o).collect();
                let expected: Vec<u64> = model.range(..32).map(|(o, _)| *o).collect();
                prop_assert_eq!(below, expected);
                for offset in 0..64 {
                    prop_assert_eq!(window.get(offset), model.get(&offset));
                }
            }
        }
    }
}
