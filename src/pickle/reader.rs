//! A pickle reader that builds values and never runs code.
//!
//! Why our own: model files and Girder's region responses are pickles, and Python's `pickle.load`
//! would construct whatever the stream names. Here every `GLOBAL` is checked against an allow-list
//! given by the caller (`torch._utils._rebuild_tensor_v2`, `numpy.dtype`, ...); anything else is an
//! error before a single object is made. `REDUCE`/`BUILD` only record the call for the caller to
//! interpret. Lengths read from the stream are checked against the bytes left, so a hostile length
//! cannot make us allocate gigabytes.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use super::value::{Call, Global, Value};

#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    #[error("pickle stream ends early (at byte {0}); the file is truncated")]
    Truncated(usize),
    #[error("pickle opcode 0x{op:02x} at byte {pos} is not supported")]
    UnsupportedOpcode { op: u8, pos: usize },
    #[error("pickle names the global `{0}`, which is not allowed here (only plain tensors/arrays are accepted; refusing to construct arbitrary objects)")]
    DisallowedGlobal(Global),
    #[error("malformed pickle at byte {pos}: {msg}")]
    Malformed { pos: usize, msg: String },
}

/// Which globals a stream may name. Anything else is refused.
#[derive(Debug, Clone, Default)]
pub struct Allowed {
    globals: HashSet<Global>,
}

impl Allowed {
    pub fn new<'a>(names: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Allowed { globals: names.into_iter().map(|(m, n)| Global::new(m, n)).collect() }
    }
}

/// Globals whose call semantics the reader itself knows (containers).
fn is_dict_type(g: &Global) -> bool {
    (g.module == "collections" && g.name == "OrderedDict")
        || (g.module == "builtins" && g.name == "dict")
        || (g.module == "__builtin__" && g.name == "dict")
}

/// Parse a whole pickle stream. `allowed` limits globals; in-band buffers only.
pub fn read(data: &[u8], allowed: &Allowed) -> Result<Value, PickleError> {
    Reader { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new(), allowed }.run()
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    allowed: &'a Allowed,
}

/// Bound on memo entries and nesting to keep hostile input cheap.
const MAX_MEMO: usize = 1 << 20;

impl<'a> Reader<'a> {
    fn err(&self, msg: impl Into<String>) -> PickleError {
        PickleError::Malformed { pos: self.pos, msg: msg.into() }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        if n > self.data.len() - self.pos {
            return Err(PickleError::Truncated(self.data.len()));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap_or_default()))
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, PickleError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn len64(&mut self) -> Result<usize, PickleError> {
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| PickleError::Truncated(self.data.len()))
    }
    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or(PickleError::Truncated(self.data.len()))?;
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end]).map_err(|_| self.err("non-UTF-8 text line"))
    }
    fn utf8(&mut self, n: usize) -> Result<String, PickleError> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err("string is not valid UTF-8"))
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }
    fn top(&mut self) -> Result<&mut Value, PickleError> {
        let pos = self.pos;
        self.stack.last_mut().ok_or(PickleError::Malformed { pos, msg: "stack underflow".into() })
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let m = self.marks.pop().ok_or_else(|| self.err("MARK missing"))?;
        if m > self.stack.len() {
            return Err(self.err("MARK beyond stack"));
        }
        Ok(self.stack.split_off(m))
    }
    fn memo_put(&mut self, key: u32) -> Result<(), PickleError> {
        if self.memo.len() >= MAX_MEMO {
            return Err(self.err("memo too large"));
        }
        let v = self.stack.last().cloned().ok_or_else(|| self.err("memoize on empty stack"))?;
        self.memo.insert(key, v);
        Ok(())
    }
    fn memo_get(&mut self, key: u32) -> Result<(), PickleError> {
        let v = self.memo.get(&key).cloned().ok_or_else(|| self.err(format!("memo key {key} unknown")))?;
        self.stack.push(v);
        Ok(())
    }

    fn global(&mut self, module: &str, name: &str) -> Result<(), PickleError> {
        let g = Global::new(module, name);
        if !self.allowed.globals.contains(&g) {
            return Err(PickleError::DisallowedGlobal(g));
        }
        self.stack.push(Value::Global(g));
        Ok(())
    }

    /// `REDUCE`/`NEWOBJ`: dict types become dicts; any other allowed global is recorded as a call.
    fn call(&mut self, func: Value, args: Value) -> Result<(), PickleError> {
        let Value::Global(g) = func else {
            return Err(
                self.err(format!("call of a {} (only allowed globals can be called)", func.type_name()))
            );
        };
        let args = args.as_seq().ok_or_else(|| self.err("call arguments are not a tuple"))?;
        let v = if is_dict_type(&g) {
            let mut items = Vec::new();
            if let Some(first) = args.first() {
                // dict(iterable of pairs) as written by some pickles
                for pair in first.as_seq().unwrap_or_default() {
                    let kv = pair.as_seq().ok_or_else(|| self.err("dict item is not a pair"))?;
                    if kv.len() != 2 {
                        return Err(self.err("dict item is not a pair"));
                    }
                    items.push((kv[0].clone(), kv[1].clone()));
                }
            }
            Value::Dict(Rc::new(RefCell::new(items)))
        } else {
            Value::Call(Rc::new(RefCell::new(Call { func: g, args, state: None })))
        };
        self.stack.push(v);
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err("SETITEMS with an odd number of values"));
        }
        let pos = self.pos;
        let Value::Dict(d) = self.top()? else {
            return Err(PickleError::Malformed {
                pos,
                msg: "SETITEM(S) on something that is not a dict".into(),
            });
        };
        let mut d = d.borrow_mut();
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }

    fn append(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        let pos = self.pos;
        let Value::List(l) = self.top()? else {
            return Err(PickleError::Malformed {
                pos,
                msg: "APPEND(S) on something that is not a list".into(),
            });
        };
        l.borrow_mut().extend(items);
        Ok(())
    }

    fn run(mut self) -> Result<Value, PickleError> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(self.err(format!("pickle protocol {proto} is newer than 5")));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: length only, frames are contiguous in memory here
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64))
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64))
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64))
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err(self.err("integer wider than 64 bits"));
                    }
                    let mut v: i64 = 0;
                    for (i, &byte) in b.iter().enumerate() {
                        v |= (byte as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Value::Int(v));
                }
                b'I' => {
                    let line = self.line()?;
                    let v = match line {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        s => Value::Int(s.parse().map_err(|_| self.err("bad INT"))?),
                    };
                    self.stack.push(v);
                }
                b'L' => {
                    let line = self.line()?.trim_end_matches('L');
                    let v = line.parse().map_err(|_| self.err("bad LONG"))?;
                    self.stack.push(Value::Int(v));
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.stack.push(Value::Float(f64::from_be_bytes(a)));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.utf8(n)?;
                    self.stack.push(Value::Str(s));
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.utf8(n)?;
                    self.stack.push(Value::Str(s));
                }
                0x8d => {
                    let n = self.len64()?;
                    let s = self.utf8(n)?;
                    self.stack.push(Value::Str(s));
                }
                // py2 str opcodes: numpy pickles made under Python 2 use them for dtype codes
                b'U' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(Rc::new(b)));
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(Rc::new(b)));
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(Rc::new(b)));
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(Rc::new(b)));
                }
                0x8e | 0x96 => {
                    let n = self.len64()?;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(Rc::new(b)));
                }
                0x97 | 0x98 => {
                    return Err(self
                        .err("out-of-band buffers (NEXT_BUFFER) are not supported; send the array in-band"))
                }
                b')' => self.stack.push(Value::Tuple(Rc::new(Vec::new()))),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.err("stack underflow in TUPLEn"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                b']' => self.stack.push(Value::List(Rc::new(RefCell::new(Vec::new())))),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b'}' => self.stack.push(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Dict(Rc::new(RefCell::new(Vec::new()))));
                    self.set_items(items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    self.global(&module, &name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.global(&m, &n)?,
                        _ => return Err(self.err("STACK_GLOBAL needs two strings")),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    self.call(func, args)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    match self.top()? {
                        Value::Call(c) => c.borrow_mut().state = Some(state),
                        // OrderedDict instance attributes (state_dict `_metadata`) are kept aside:
                        // a dict cannot hold them, and they carry no tensor data.
                        Value::Dict(_) => {}
                        other => {
                            let t = other.type_name();
                            return Err(self.err(format!("BUILD on a {t}")));
                        }
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(Value::PersistentId(Rc::new(pid)));
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?;
                }
                b'p' => {
                    let k: u32 = self.line()?.parse().map_err(|_| self.err("bad PUT"))?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k)?;
                }
                b'g' => {
                    let k: u32 = self.line()?.parse().map_err(|_| self.err("bad GET"))?;
                    self.memo_get(k)?;
                }
                _ => return Err(PickleError::UnsupportedOpcode { op, pos: at }),
            }
            if self.stack.len() > MAX_MEMO {
                return Err(self.err("stack too deep"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_globals_outside_the_allow_list() {
        // pickle.dumps(os.system) style: GLOBAL 'os\nsystem\n' STOP
        let data = b"\x80\x02cos\nsystem\nq\x00.";
        let err = read(data, &Allowed::default()).unwrap_err();
        assert!(
            matches!(err, PickleError::DisallowedGlobal(ref g) if g.module == "os" && g.name == "system")
        );
        assert!(err.to_string().contains("os.system"));
    }

    #[test]
    fn memoized_dict_filled_after_put_is_seen_through_get() {
        // EMPTY_DICT BINPUT 0 MARK 'a' 1 SETITEMS POP BINGET 0 STOP
        let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01u0h\x00.";
        let v = read(data, &Allowed::default()).unwrap();
        let Value::Dict(d) = v else { panic!("not a dict") };
        assert_eq!(d.borrow().len(), 1);
        assert_eq!(d.borrow()[0].1.as_int(), Some(1));
    }

    #[test]
    fn hostile_length_is_truncation_not_allocation() {
        let data = b"\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\x7f";
        assert!(matches!(read(data, &Allowed::default()), Err(PickleError::Truncated(_))));
    }

    #[test]
    fn negative_long1_is_sign_extended() {
        let data = b"\x80\x02\x8a\x02\x00\xff.";
        assert_eq!(read(data, &Allowed::default()).unwrap().as_int(), Some(-256));
    }
}
