//! A map holding one value per type: the application state given to
//! [`CableBuilder::state`](crate::CableBuilder::state), and what a transport
//! attaches to a [`ConnectRequest`](crate::ConnectRequest) (cable-server puts
//! the HTTP request's own extensions there, so that what axum middleware
//! stored, a session or a logged-in user, reaches the connection hook).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

/// One value per type, cheap to clone (the values are shared).
///
/// ```
/// use cable_core::Extensions;
/// #[derive(Debug, PartialEq)]
/// struct Db(&'static str);
/// let mut ext = Extensions::new();
/// ext.insert(Db("postgres://db/app"));
/// assert_eq!(ext.get::<Db>(), Some(&Db("postgres://db/app")));
/// assert_eq!(ext.get::<String>(), None);
/// ```
#[derive(Clone, Default)]
pub struct Extensions(HashMap<TypeId, Arc<dyn Any + Send + Sync>>);

impl Extensions {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `value` in, replacing the value of its type if there was one.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.0.insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// The value of type `T`, if one was put in.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.0.get(&TypeId::of::<T>())?.downcast_ref()
    }

    /// The value of type `T` as a shared handle, to keep past the borrow.
    pub fn get_arc<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.0.get(&TypeId::of::<T>())?.clone().downcast().ok()
    }

    /// Whether nothing was put in.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Extensions({} values)", self.0.len())
    }
}
