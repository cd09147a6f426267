//! Read-model generations and the query side.
//!
//! Each generation of a projection's read model is one sled tree per table, named
//! `projection.NAME.GENERATION.TABLE`. Queries take a [`ModelView`] of the active generation.
//! A rebuild swaps a new generation in, and the old one is emptied once the last view of it
//! is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use aqueduct::Broker;
use parking_lot::RwLock;

use super::checkpoint::checkpoint_key;
use super::error::ProjectionError;

/// One generation of a projection's tables.
pub(crate) struct Generation {
    meta: sled::Tree,
    pub(crate) projection: String,
    pub(crate) number: u64,
    pub(crate) names: Vec<String>,
    pub(crate) trees: Vec<sled::Tree>,
    retired: AtomicBool,
}

impl Generation {
    pub(crate) fn open(
        broker: &Broker,
        meta: &sled::Tree,
        projection: &str,
        number: u64,
        names: &[String],
    ) -> Result<Self, ProjectionError> {
        let mut trees = Vec::with_capacity(names.len());
        for name in names {
            trees.push(broker.tree(&table_tree_name(projection, number, name))?);
        }
        Ok(Generation {
            meta: meta.clone(),
            projection: projection.to_string(),
            number,
            names: names.to_vec(),
            trees,
            retired: AtomicBool::new(false),
        })
    }

    /// Removes every entry of every table.
    pub(crate) fn clear(&self) -> Result<(), ProjectionError> {
        for tree in &self.trees {
            tree.clear()?;
        }
        Ok(())
    }

    /// Clears the tables, then removes the checkpoint. A crash in between leaves the
    /// checkpoint, so the next start finds the generation and clears it again.
    fn discard(&self) -> Result<(), ProjectionError> {
        self.clear()?;
        self.meta.remove(checkpoint_key(self.number))?;
        Ok(())
    }

    /// Marks the generation for clearing once the last view of it is dropped.
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if !self.retired.load(Ordering::SeqCst) {
            return;
        }
        // NOTE: the broker hands out trees but cannot drop them, so a retired generation's
        // trees stay in the database, empty.
        match self.discard() {
            Ok(()) => tracing::debug!(
                projection = %self.projection,
                generation = self.number,
                "retired read-model generation cleared"
            ),
            Err(error) => tracing::warn!(
                projection = %self.projection,
                generation = self.number,
                %error,
                "could not clear retired read-model generation; it is cleared at the next start"
            ),
        }
    }
}

pub(crate) fn table_tree_name(projection: &str, generation: u64, table: &str) -> String {
    format!("projection.{projection}.{generation}.{table}")
}

/// The query side of a projection: hands out views of the active generation.
///
/// `ReadModel` is a cheap handle; clones follow the same runner, including swaps after a
/// rebuild.
///
/// # Examples
///
/// ```
/// # use aqueduct_patterns::{ApplyError, ModelWriter, Projection, SourceEvent};
/// # struct Names;
/// # impl Projection for Names {
/// #     fn tables(&self) -> &[&str] { &["names"] }
/// #     fn apply(&self, e: &SourceEvent, m: &ModelWriter<'_>) -> Result<(), ApplyError> {
/// #         m.table("names")?.insert(e.payload(), &[])?;
/// #         Ok(())
/// #     }
/// # }
/// use std::time::Duration;
/// use aqueduct_patterns::{EventStore, ExpectedVersion, NewEvent, ProjectionRunner};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let broker = aqueduct::Broker::temporary()?;
/// let store = EventStore::open(&broker, "people")?;
/// let runner = ProjectionRunner::from_store(&store, "names", Names, Default::default())?;
/// let appended = store
///     .append("person-1", ExpectedVersion::Any, vec![NewEvent::new("Named", 1, b"ada".to_vec())])?
///     .expect("no conflict");
/// assert!(runner.wait_for(appended.position, Duration::from_secs(5))?);
///
/// let view = runner.read_model().view();
/// assert!(view.table("names")?.contains_key("ada")?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ReadModel {
    current: Arc<RwLock<Arc<Generation>>>,
}

impl ReadModel {
    pub(crate) fn new(generation: Generation) -> Self {
        ReadModel {
            current: Arc::new(RwLock::new(Arc::new(generation))),
        }
    }

    pub(crate) fn current(&self) -> Arc<Generation> {
        Arc::clone(&self.current.read())
    }

    /// Makes `generation` the active one and retires the previous one, which is returned so
    /// that the caller chooses where its tables are emptied (when the last reference drops).
    pub(crate) fn swap(&self, generation: Generation) -> Arc<Generation> {
        let old = std::mem::replace(&mut *self.current.write(), Arc::new(generation));
        old.retire();
        old
    }

    /// Returns a view of the active generation. The view keeps reading that generation,
    /// also when a rebuild swaps in a new one meanwhile.
    pub fn view(&self) -> ModelView {
        ModelView {
            generation: self.current(),
        }
    }
}

impl std::fmt::Debug for ReadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.current();
        f.debug_struct("ReadModel")
            .field("projection", &current.projection)
            .field("generation", &current.number)
            .finish()
    }
}

/// The tables of one read-model generation, for queries.
#[derive(Clone)]
pub struct ModelView {
    generation: Arc<Generation>,
}

impl ModelView {
    /// Returns the sled tree of table `name`.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::UnknownTable`] when the projection does not declare `name`.
    pub fn table(&self, name: &str) -> Result<&sled::Tree, ProjectionError> {
        let generation = &self.generation;
        generation
            .names
            .iter()
            .position(|declared| declared == name)
            .and_then(|index| generation.trees.get(index))
            .ok_or_else(|| ProjectionError::UnknownTable {
                projection: generation.projection.clone(),
                table: name.to_string(),
                tables: generation.names.clone(),
            })
    }

    /// Returns the generation number, which grows by one with every rebuild.
    pub fn generation(&self) -> u64 {
        self.generation.number
    }
}

impl std::fmt::Debug for ModelView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelView")
            .field("projection", &self.generation.projection)
            .field("generation", &self.generation.number)
            .finish()
    }
}
