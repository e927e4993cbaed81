//! The values a pickle stream can produce under our allow-list.
//!
//! Containers are shared (`Rc<RefCell<..>>`) because pickle's memo lets a stream refer back to an
//! object that is still being filled (`EMPTY_DICT`, `BINPUT`, then `SETITEMS`); a copy would go stale.

use std::cell::RefCell;
use std::rc::Rc;

/// A dotted Python global such as `torch._utils._rebuild_tensor_v2`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Global {
    pub module: String,
    pub name: String,
}

impl Global {
    pub fn new(module: &str, name: &str) -> Self {
        Global { module: module.to_string(), name: name.to_string() }
    }
}

impl std::fmt::Display for Global {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.module, self.name)
    }
}

/// An allowed callable applied to its arguments (`REDUCE`/`NEWOBJ`), plus any `BUILD` state.
/// Nothing is executed: the caller interprets the call by the global's name.
#[derive(Debug)]
pub struct Call {
    pub func: Global,
    pub args: Vec<Value>,
    pub state: Option<Value>,
}

#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Rc<Vec<u8>>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    /// Python dict or `collections.OrderedDict`; insertion order kept.
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(Global),
    Call(Rc<RefCell<Call>>),
    /// The result of `BINPERSID`: what the stream named as an out-of-band object (torch storages).
    PersistentId(Rc<Value>),
}

impl Value {
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Call(_) => "object",
            Value::PersistentId(_) => "persistent id",
        }
    }

    pub(crate) fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Items of a tuple or list, copied out (values are cheap `Rc` clones).
    pub(crate) fn as_seq(&self) -> Option<Vec<Value>> {
        match self {
            Value::Tuple(t) => Some(t.as_ref().clone()),
            Value::List(l) => Some(l.borrow().clone()),
            _ => None,
        }
    }

    /// A tuple/list of ints, as used for shapes and strides.
    pub(crate) fn as_int_seq(&self) -> Option<Vec<i64>> {
        self.as_seq()?.iter().map(Value::as_int).collect()
    }
}
