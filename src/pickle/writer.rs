//! Emits pickle protocol 2 opcodes, the protocol `torch.save` uses by default.

/// Appends opcodes to a buffer; callers compose them into the structure they need.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
    next_memo: u32,
}

impl Writer {
    pub fn new() -> Self {
        let mut w = Writer::default();
        w.buf.extend_from_slice(&[0x80, 2]);
        w
    }
    pub fn mark(&mut self) {
        self.buf.push(b'(');
    }
    pub fn global(&mut self, module: &str, name: &str) {
        self.buf.push(b'c');
        self.buf.extend_from_slice(module.as_bytes());
        self.buf.push(b'\n');
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(b'\n');
    }
    pub fn str(&mut self, s: &str) {
        self.buf.push(b'X');
        self.buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(s.as_bytes());
    }
    pub fn int(&mut self, v: i64) {
        if (0..256).contains(&v) {
            self.buf.extend_from_slice(&[b'K', v as u8]);
        } else if (0..65536).contains(&v) {
            self.buf.push(b'M');
            self.buf.extend_from_slice(&(v as u16).to_le_bytes());
        } else if i32::try_from(v).is_ok() {
            self.buf.push(b'J');
            self.buf.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            self.buf.extend_from_slice(&[0x8a, 8]);
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
    }
    pub fn bool(&mut self, v: bool) {
        self.buf.push(if v { 0x88 } else { 0x89 });
    }
    pub fn none(&mut self) {
        self.buf.push(b'N');
    }
    pub fn float(&mut self, v: f64) {
        self.buf.push(b'G');
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn empty_tuple(&mut self) {
        self.buf.push(b')');
    }
    /// Closes a `mark()` into a tuple.
    pub fn tuple(&mut self) {
        self.buf.push(b't');
    }
    pub fn int_tuple(&mut self, values: &[i64]) {
        self.mark();
        for &v in values {
            self.int(v);
        }
        self.tuple();
    }
    pub fn reduce(&mut self) {
        self.buf.push(b'R');
    }
    pub fn build(&mut self) {
        self.buf.push(b'b');
    }
    pub fn binpersid(&mut self) {
        self.buf.push(b'Q');
    }
    pub fn setitems(&mut self) {
        self.buf.push(b'u');
    }
    /// Memoizes the top of the stack and returns its key for `get`.
    pub fn put(&mut self) -> u32 {
        let k = self.next_memo;
        self.next_memo += 1;
        self.buf.push(b'r');
        self.buf.extend_from_slice(&k.to_le_bytes());
        k
    }
    pub fn get(&mut self, key: u32) {
        self.buf.push(b'j');
        self.buf.extend_from_slice(&key.to_le_bytes());
    }
    pub fn stop(mut self) -> Vec<u8> {
        self.buf.push(b'.');
        self.buf
    }
}
