//! A pickle reader that never executes anything.
//!
//! A `.pth` file is a pickle *program*: opcodes that build objects and may call any
//! importable Python function (`GLOBAL os system` + `REDUCE` runs a shell). This
//! reader interprets the opcodes a `state_dict` needs and nothing else. Globals are
//! checked against an allow-list the moment they are named, before any call, and
//! "calls" to the allowed ones only build inert values ([`Value`]); no code of any
//! kind runs. Every length is checked against the bytes that remain, and the stack,
//! memo and nesting are bounded, so a hostile or truncated file ends in a
//! [`PickleError`], never a panic or a huge allocation.

use std::collections::HashMap;
use std::fmt;

/// Globals a torch state_dict may name. Anything else is refused by name.
const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "FloatStorage"),
    ("torch", "DoubleStorage"),
    ("torch", "HalfStorage"),
    ("torch", "BFloat16Storage"),
    ("torch", "LongStorage"),
    ("torch", "IntStorage"),
    ("torch", "ShortStorage"),
    ("torch", "CharStorage"),
    ("torch", "ByteStorage"),
    ("torch", "BoolStorage"),
];

/// Which globals a pickle may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// A `.pth` state_dict: only [`ALLOWED_GLOBALS`].
    StateDict,
    /// A TorchScript archive (tch `.ot`): also `__torch__.*` class names, which become
    /// inert [`Value::Object`]s holding their attribute dict.
    TorchScriptArchive,
}

/// Most values on the stack plus the memo; far above any real state_dict.
const MAX_VALUES: usize = 1 << 20;
/// Most values pushed in one pickle, wherever they end up (a real state_dict of a
/// ResNet-152 pushes about 20,000).
const MAX_PUSHES: usize = 1 << 22;
/// Most value nodes copied by memo PUT/GET/DUP in one pickle (stops "billion laughs").
const MAX_COPIED_NODES: usize = 1 << 21;
/// Deepest nesting of containers.
const MAX_DEPTH: usize = 256;

/// Why a pickle was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PickleError {
    /// A global outside the allow-list (e.g. `os.system`): the file tried to call code.
    #[error(
        "refused global `{module}.{name}` at byte {offset}: a weight file may only name \
         OrderedDict, torch tensor-rebuild functions and torch storage types; this file \
         tries to reference other Python code and was not loaded"
    )]
    ForbiddenGlobal {
        /// Python module.
        module: String,
        /// Attribute in it.
        name: String,
        /// Byte offset of the opcode.
        offset: usize,
    },
    /// An opcode this reader does not interpret.
    #[error("unsupported pickle opcode 0x{opcode:02x} at byte {offset}")]
    UnsupportedOpcode {
        /// The opcode byte.
        opcode: u8,
        /// Byte offset of the opcode.
        offset: usize,
    },
    /// The data ended inside an opcode or before STOP.
    #[error("pickle truncated at byte {0}")]
    Truncated(usize),
    /// Structurally wrong: stack underflow, bad memo key, wrong argument types, limits.
    #[error("malformed pickle at byte {offset}: {message}")]
    Malformed {
        /// Byte offset of the opcode.
        offset: usize,
        /// What was wrong.
        message: String,
    },
}

/// An allowed global, after the allow-list check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict`.
    OrderedDict,
    /// `torch._utils._rebuild_tensor` / `_rebuild_tensor_v2`.
    RebuildTensor,
    /// `torch._utils._rebuild_parameter`.
    RebuildParameter,
    /// `torch.<Kind>Storage`; the name is the storage type.
    Storage(StorageType),
    /// A TorchScript class name (`__torch__.…`), only under [`Policy::TorchScriptArchive`].
    Class(String),
}

/// Element type of a torch storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageType {
    /// float32.
    Float,
    /// float64.
    Double,
    /// float16.
    Half,
    /// bfloat16.
    BFloat16,
    /// int64.
    Long,
    /// int32.
    Int,
    /// int16.
    Short,
    /// int8.
    Char,
    /// uint8.
    Byte,
    /// bool.
    Bool,
}

impl StorageType {
    fn from_name(name: &str) -> Option<StorageType> {
        Some(match name {
            "FloatStorage" => StorageType::Float,
            "DoubleStorage" => StorageType::Double,
            "HalfStorage" => StorageType::Half,
            "BFloat16Storage" => StorageType::BFloat16,
            "LongStorage" => StorageType::Long,
            "IntStorage" => StorageType::Int,
            "ShortStorage" => StorageType::Short,
            "CharStorage" => StorageType::Char,
            "ByteStorage" => StorageType::Byte,
            "BoolStorage" => StorageType::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn element_size(self) -> usize {
        match self {
            StorageType::Double | StorageType::Long => 8,
            StorageType::Float | StorageType::Int => 4,
            StorageType::Half | StorageType::BFloat16 | StorageType::Short => 2,
            StorageType::Char | StorageType::Byte | StorageType::Bool => 1,
        }
    }
}

/// A value built by the reader. Nothing in here can run code.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits in i64.
    Int(i64),
    /// An integer too wide for i64, as little-endian two's-complement bytes.
    BigInt(Vec<u8>),
    /// A float.
    Float(f64),
    /// A str.
    Str(String),
    /// bytes.
    Bytes(Vec<u8>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A list.
    List(Vec<Value>),
    /// A dict or OrderedDict, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// An allowed global (not yet called).
    Global(Global),
    /// What a persistent id (BINPERSID) referred to: the raw id tuple.
    Persistent(Box<Value>),
    /// The result of a tensor-rebuild call: its arguments, uninterpreted.
    Tensor {
        /// The storage (a [`Value::Persistent`]).
        storage: Box<Value>,
        /// Offset into the storage, in elements.
        offset: i64,
        /// Shape.
        size: Vec<i64>,
        /// Strides, in elements.
        stride: Vec<i64>,
    },
    /// An instance of a TorchScript class: just its name and the state BUILD gave it.
    Object {
        /// The class name.
        class: String,
        /// Its attributes (a dict), or None before BUILD.
        state: Box<Value>,
    },
}

impl Value {
    /// A short name of the value's type, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Persistent(_) => "persistent id",
            Value::Tensor { .. } => "tensor",
            Value::Object { .. } => "object",
        }
    }

    /// The elements of a tuple or list.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(v) | Value::List(v) => Some(v),
            _ => None,
        }
    }

    /// The string of a str.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value of an int.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl fmt::Display for Global {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Global::OrderedDict => write!(f, "collections.OrderedDict"),
            Global::RebuildTensor => write!(f, "torch._utils._rebuild_tensor_v2"),
            Global::RebuildParameter => write!(f, "torch._utils._rebuild_parameter"),
            Global::Storage(t) => write!(f, "torch.{t:?}Storage"),
            Global::Class(c) => write!(f, "{c}"),
        }
    }
}

/// Reads one pickle starting at `data[0]`. Returns the value and the bytes consumed
/// (legacy torch files are several pickles back to back, followed by raw storage).
pub fn read(data: &[u8], policy: Policy) -> Result<(Value, usize), PickleError> {
    Machine::new(data, policy).run()
}

/// Interpreter state for one pickle.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being interpreted, for errors.
    at: usize,
    stack: Vec<Value>,
    /// Nesting depth of each stack value (kept beside it so no value is ever walked).
    depths: Vec<usize>,
    marks: Vec<usize>,
    memo: HashMap<u32, (Value, usize)>,
    /// Nodes copied so far (see [`MAX_COPIED_NODES`]).
    copied: usize,
    /// Values pushed so far (see [`MAX_PUSHES`]).
    pushed: usize,
    policy: Policy,
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8], policy: Policy) -> Self {
        Machine {
            data,
            pos: 0,
            at: 0,
            stack: Vec::new(),
            depths: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            copied: 0,
            pushed: 0,
            policy,
        }
    }

    fn malformed(&self, message: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            offset: self.at,
            message: message.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.data.len())
            .ok_or(PickleError::Truncated(self.data.len()))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, PickleError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64_len(&mut self) -> Result<usize, PickleError> {
        let n = u64::from_le_bytes(self.take(8)?.try_into().unwrap());
        usize::try_from(n).map_err(|_| PickleError::Truncated(self.data.len()))
    }

    /// A newline-terminated line (text opcodes), without the newline.
    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.data[self.pos..];
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated(self.data.len()))?;
        let bytes = self.take(len + 1)?;
        std::str::from_utf8(&bytes[..len]).map_err(|_| self.malformed("line is not UTF-8"))
    }

    fn utf8(&mut self, n: usize) -> Result<Value, PickleError> {
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes).map_err(|_| self.malformed("string is not UTF-8"))?;
        Ok(Value::Str(s.to_owned()))
    }

    /// Pushes a leaf value.
    fn push(&mut self, v: Value) -> Result<(), PickleError> {
        self.push_nested(v, 0)
    }

    /// Pushes a value whose nesting depth is `depth`.
    fn push_nested(&mut self, v: Value, depth: usize) -> Result<(), PickleError> {
        // Every value ever pushed counts (values moved into containers stay alive).
        self.pushed += 1;
        if self.pushed > MAX_PUSHES || self.stack.len() + self.memo.len() >= MAX_VALUES {
            return Err(self.malformed("too many values"));
        }
        if depth > MAX_DEPTH {
            return Err(self.malformed("containers nested too deeply"));
        }
        self.stack.push(v);
        self.depths.push(depth);
        Ok(())
    }

    fn check_underflow(&self) -> Result<(), PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.malformed("stack underflow"));
        }
        Ok(())
    }

    /// Pops a value and its depth.
    fn pop_nested(&mut self) -> Result<(Value, usize), PickleError> {
        self.check_underflow()?;
        Ok((self.stack.pop().unwrap(), self.depths.pop().unwrap()))
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        Ok(self.pop_nested()?.0)
    }

    fn top(&mut self) -> Result<&mut Value, PickleError> {
        self.check_underflow()?;
        Ok(self.stack.last_mut().unwrap())
    }

    /// Pops everything down to the last MARK, with the deepest nesting among them.
    fn pop_mark(&mut self) -> Result<(Vec<Value>, usize), PickleError> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.malformed("no MARK on the stack"))?;
        let depth = self.depths.split_off(mark).into_iter().max().unwrap_or(0);
        Ok((self.stack.split_off(mark), depth))
    }

    /// Puts `items` (of nesting `depth`) into the container on top of the stack.
    fn nest_into_top(&mut self, depth: usize) -> Result<(), PickleError> {
        self.check_underflow()?;
        let top = self.depths.last_mut().unwrap();
        *top = (*top).max(depth + 1);
        if *top > MAX_DEPTH {
            return Err(self.malformed("containers nested too deeply"));
        }
        Ok(())
    }

    /// Accounts for copying `v`; fails once too much has been copied.
    fn charge_copy(&mut self, v: &Value) -> Result<(), PickleError> {
        self.copied = self.copied.saturating_add(nodes(v));
        if self.copied > MAX_COPIED_NODES {
            return Err(self.malformed("too many values copied (memo or DUP bomb)"));
        }
        Ok(())
    }

    fn memo_put(&mut self, key: u32) -> Result<(), PickleError> {
        let v = self.top()?.clone();
        self.charge_copy(&v)?;
        if self.memo.len() >= MAX_VALUES {
            return Err(self.malformed("memo too large"));
        }
        let depth = *self.depths.last().unwrap();
        self.memo.insert(key, (v, depth));
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<(), PickleError> {
        let v = self
            .memo
            .get(&key)
            .cloned()
            .ok_or_else(|| self.malformed(format!("memo key {key} was never stored")))?;
        self.charge_copy(&v.0)?;
        self.push_nested(v.0, v.1)
    }

    fn global(&self, module: &str, name: &str) -> Result<Global, PickleError> {
        if self.policy == Policy::TorchScriptArchive
            && (module == "__torch__" || module.starts_with("__torch__."))
        {
            return Ok(Global::Class(format!("{module}.{name}")));
        }
        if !ALLOWED_GLOBALS.contains(&(module, name)) {
            return Err(PickleError::ForbiddenGlobal {
                module: module.chars().take(200).collect(),
                name: name.chars().take(200).collect(),
                offset: self.at,
            });
        }
        Ok(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch._utils", _) => Global::RebuildTensor,
            (_, storage) => Global::Storage(StorageType::from_name(storage).unwrap()),
        })
    }

    /// What calling an allowed global with `args` produces (an inert value).
    fn call(&self, callable: Value, args: Value) -> Result<Value, PickleError> {
        let Value::Global(global) = callable else {
            return Err(self.malformed(format!("REDUCE on a {}", callable.kind())));
        };
        let Value::Tuple(mut args) = args else {
            return Err(self.malformed("REDUCE arguments are not a tuple"));
        };
        match global {
            Global::OrderedDict if args.is_empty() => Ok(Value::Dict(Vec::new())),
            Global::RebuildTensor if args.len() >= 4 => {
                let ints = |v: &Value, what: &str| -> Result<Vec<i64>, PickleError> {
                    v.as_seq()
                        .and_then(|s| s.iter().map(Value::as_int).collect::<Option<Vec<_>>>())
                        .ok_or_else(|| self.malformed(format!("tensor {what} is not ints")))
                };
                let offset = args[1]
                    .as_int()
                    .ok_or_else(|| self.malformed("tensor offset is not an int"))?;
                let size = ints(&args[2], "size")?;
                let stride = ints(&args[3], "stride")?;
                if size.len() != stride.len() {
                    return Err(self.malformed("tensor size and stride differ in length"));
                }
                let storage = std::mem::replace(&mut args[0], Value::None);
                if !matches!(storage, Value::Persistent(_)) {
                    return Err(self.malformed("tensor storage is not a persistent id"));
                }
                Ok(Value::Tensor {
                    storage: Box::new(storage),
                    offset,
                    size,
                    stride,
                })
            }
            Global::RebuildParameter if !args.is_empty() => {
                let tensor = args.swap_remove(0);
                match tensor {
                    Value::Tensor { .. } => Ok(tensor),
                    other => Err(self.malformed(format!("parameter of a {}", other.kind()))),
                }
            }
            other => Err(self.malformed(format!(
                "cannot call {other} with {} argument(s)",
                args.len()
            ))),
        }
    }

    fn run(mut self) -> Result<(Value, usize), PickleError> {
        loop {
            self.at = self.pos;
            let op = self.u8()?;
            match op {
                // PROTO
                0x80 => {
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(self.malformed(format!("pickle protocol {v}")));
                    }
                }
                // FRAME: a length hint only.
                0x95 => {
                    self.take(8)?;
                }
                // STOP
                b'.' => {
                    let v = self.pop()?;
                    return Ok((v, self.pos));
                }
                b'(' => {
                    if self.marks.len() >= MAX_VALUES {
                        return Err(self.malformed("too many MARKs"));
                    }
                    self.marks.push(self.stack.len())
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.charge_copy(&v)?;
                    let depth = *self.depths.last().unwrap();
                    self.push_nested(v, depth)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                // INT (text): also True/False in protocol 0.
                b'I' => {
                    let line = self.line()?;
                    let v = match line {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => Value::Int(
                            line.parse()
                                .map_err(|_| self.malformed("INT is not a number"))?,
                        ),
                    };
                    self.push(v)?;
                }
                // BININT, BININT1, BININT2
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().unwrap());
                    self.push(Value::Int(v.into()))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()))?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v.into()))?;
                }
                // LONG1, LONG4
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        let n = i32::from_le_bytes(self.take(4)?.try_into().unwrap());
                        usize::try_from(n).map_err(|_| self.malformed("negative LONG4 length"))?
                    };
                    let bytes = self.take(n)?;
                    self.push(long_value(bytes))?;
                }
                // BINFLOAT (big-endian)
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.push(Value::Float(v))?;
                }
                // SHORT_BINUNICODE, BINUNICODE, BINUNICODE8
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.push(v)?;
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    self.push(v)?;
                }
                0x8d => {
                    let n = self.u64_len()?;
                    let v = self.utf8(n)?;
                    self.push(v)?;
                }
                // SHORT_BINSTRING, BINSTRING (py2 str): decoded as latin-1-ish bytes.
                b'U' | b'T' => {
                    let n = if op == b'U' {
                        self.u8()? as usize
                    } else {
                        let n = i32::from_le_bytes(self.take(4)?.try_into().unwrap());
                        usize::try_from(n)
                            .map_err(|_| self.malformed("negative BINSTRING length"))?
                    };
                    let bytes = self.take(n)?;
                    self.push(Value::Str(bytes.iter().map(|&b| b as char).collect()))?;
                }
                // SHORT_BINBYTES, BINBYTES, BINBYTES8
                b'C' | b'B' | 0x8e => {
                    let n = match op {
                        b'C' => self.u8()? as usize,
                        b'B' => self.u32()? as usize,
                        _ => self.u64_len()?,
                    };
                    let bytes = self.take(n)?.to_vec();
                    self.push(Value::Bytes(bytes))?;
                }
                b')' => self.push(Value::Tuple(Vec::new()))?,
                b't' => {
                    let (items, depth) = self.pop_mark()?;
                    self.push_nested(Value::Tuple(items), depth + 1)?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    let mut depth = 0;
                    for _ in 0..n {
                        let (v, d) = self.pop_nested()?;
                        items.push(v);
                        depth = depth.max(d);
                    }
                    items.reverse();
                    self.push_nested(Value::Tuple(items), depth + 1)?;
                }
                b']' => self.push(Value::List(Vec::new()))?,
                b'l' => {
                    let (items, depth) = self.pop_mark()?;
                    self.push_nested(Value::List(items), depth + 1)?;
                }
                b'a' => {
                    let (item, depth) = self.pop_nested()?;
                    self.list_extend(vec![item], depth)?;
                }
                b'e' => {
                    let (items, depth) = self.pop_mark()?;
                    self.list_extend(items, depth)?;
                }
                b'}' => self.push(Value::Dict(Vec::new()))?,
                b'd' => {
                    let (items, depth) = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.push_nested(Value::Dict(pairs), depth + 1)?;
                }
                b's' => {
                    let (v, dv) = self.pop_nested()?;
                    let (k, dk) = self.pop_nested()?;
                    self.dict_extend(vec![(k, v)], dv.max(dk))?;
                }
                b'u' => {
                    let (items, depth) = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.dict_extend(pairs, depth)?;
                }
                // BINPUT, LONG_BINPUT, PUT, MEMOIZE
                b'q' => {
                    let k = self.u8()?;
                    self.memo_put(k.into())?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?;
                }
                b'p' => {
                    let k = self
                        .line()?
                        .parse()
                        .map_err(|_| self.malformed("PUT key is not a number"))?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = u32::try_from(self.memo.len()).unwrap_or(u32::MAX);
                    self.memo_put(k)?;
                }
                // BINGET, LONG_BINGET, GET
                b'h' => {
                    let k = self.u8()?;
                    self.memo_get(k.into())?;
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k)?;
                }
                b'g' => {
                    let k = self
                        .line()?
                        .parse()
                        .map_err(|_| self.malformed("GET key is not a number"))?;
                    self.memo_get(k)?;
                }
                // GLOBAL (text): checked before anything can use it.
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(module, name)?;
                    self.push(Value::Global(g))?;
                }
                // STACK_GLOBAL
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(module), Some(name)) = (module.as_str(), name.as_str()) else {
                        return Err(self.malformed("STACK_GLOBAL needs two strings"));
                    };
                    let g = self.global(module, name)?;
                    self.push(Value::Global(g))?;
                }
                // REDUCE
                b'R' => {
                    let (args, depth) = self.pop_nested()?;
                    let callable = self.pop()?;
                    let v = self.call(callable, args)?;
                    self.push_nested(v, depth + 1)?;
                }
                // NEWOBJ: only TorchScript classes, which become inert objects.
                0x81 => {
                    let _args = self.pop()?;
                    let class = self.pop()?;
                    let Value::Global(Global::Class(class)) = class else {
                        return Err(self.malformed(format!("NEWOBJ on a {}", class.kind())));
                    };
                    self.push(Value::Object {
                        class,
                        state: Box::new(Value::None),
                    })?;
                }
                // BUILD: an object takes the state as its attributes; state for an
                // OrderedDict (its `_metadata`) is dropped.
                b'b' => {
                    let (state, depth) = self.pop_nested()?;
                    self.nest_into_top(depth)?;
                    match self.top()? {
                        Value::Dict(_) => {}
                        Value::Object { state: slot, .. } => **slot = state,
                        other => {
                            let kind = other.kind();
                            return Err(self.malformed(format!("BUILD on a {kind}")));
                        }
                    }
                }
                // BINPERSID
                b'Q' => {
                    let (pid, depth) = self.pop_nested()?;
                    self.push_nested(Value::Persistent(Box::new(pid)), depth + 1)?;
                }
                _ => {
                    return Err(PickleError::UnsupportedOpcode {
                        opcode: op,
                        offset: self.at,
                    })
                }
            }
        }
    }

    fn pairs(&self, items: Vec<Value>) -> Result<Vec<(Value, Value)>, PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.malformed("odd number of items for a dict"));
        }
        let mut it = items.into_iter();
        let mut pairs = Vec::new();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((k, v));
        }
        Ok(pairs)
    }

    fn list_extend(&mut self, items: Vec<Value>, depth: usize) -> Result<(), PickleError> {
        self.nest_into_top(depth)?;
        match self.top()? {
            Value::List(list) => {
                list.extend(items);
                Ok(())
            }
            other => {
                let kind = other.kind();
                Err(self.malformed(format!("APPEND to a {kind}")))
            }
        }
    }

    fn dict_extend(&mut self, pairs: Vec<(Value, Value)>, depth: usize) -> Result<(), PickleError> {
        self.nest_into_top(depth)?;
        match self.top()? {
            Value::Dict(dict) => {
                dict.extend(pairs);
                Ok(())
            }
            other => {
                let kind = other.kind();
                Err(self.malformed(format!("SETITEM on a {kind}")))
            }
        }
    }
}

/// A LONG1/LONG4 payload: little-endian two's complement.
fn long_value(bytes: &[u8]) -> Value {
    if bytes.len() <= 8 {
        let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
        let mut buf = if negative { [0xff; 8] } else { [0; 8] };
        buf[..bytes.len()].copy_from_slice(bytes);
        Value::Int(i64::from_le_bytes(buf))
    } else {
        Value::BigInt(bytes.to_vec())
    }
}

/// Number of nodes in a value (what copying it costs).
fn nodes(v: &Value) -> usize {
    match v {
        Value::Tuple(items) | Value::List(items) => 1 + items.iter().map(nodes).sum::<usize>(),
        Value::Dict(pairs) => {
            1 + pairs
                .iter()
                .map(|(k, v)| nodes(k) + nodes(v))
                .sum::<usize>()
        }
        Value::Persistent(inner) => 1 + nodes(inner),
        Value::Tensor {
            storage,
            size,
            stride,
            ..
        } => 1 + nodes(storage) + (size.len() + stride.len()) / 8,
        Value::Object { class, state } => 1 + class.len() / 64 + nodes(state),
        Value::Global(Global::Class(c)) => 1 + c.len() / 64,
        Value::Str(s) => 1 + s.len() / 64,
        Value::Bytes(b) | Value::BigInt(b) => 1 + b.len() / 64,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_basic_values() {
        // pickle.dumps({'a': [1, 2.5, None, True], 'b': (b'x',)}, protocol=2)
        let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00N\x88eX\x01\x00\x00\x00bq\x03C\x01xq\x04\x85q\x05u.";
        let (v, used) = read(data, Policy::StateDict).unwrap();
        assert_eq!(used, data.len());
        let Value::Dict(pairs) = v else { panic!() };
        assert_eq!(pairs[0].0, Value::Str("a".into()));
        assert_eq!(
            pairs[0].1,
            Value::List(vec![
                Value::Int(1),
                Value::Float(2.5),
                Value::None,
                Value::Bool(true)
            ])
        );
        assert_eq!(pairs[1].1, Value::Tuple(vec![Value::Bytes(b"x".to_vec())]));
    }

    #[test]
    fn refuses_os_system_before_reduce() {
        // cos\nsystem\n(S'touch /tmp/x'\ntR.
        let data = b"cos\nsystem\n(S'touch /tmp/x'\ntR.";
        let err = read(data, Policy::StateDict).unwrap_err();
        assert!(
            matches!(err, PickleError::ForbiddenGlobal { ref module, ref name, offset: 0 }
            if module == "os" && name == "system")
        );
        assert!(err.to_string().contains("os.system"));
    }

    #[test]
    fn negative_and_wide_longs() {
        assert_eq!(long_value(&[0xff]), Value::Int(-1));
        assert_eq!(long_value(&[0x00, 0x80, 0x00]), Value::Int(32768));
        assert_eq!(long_value(&[0x00, 0x80]), Value::Int(-32768));
        assert!(matches!(long_value(&[1; 10]), Value::BigInt(_)));
    }

    #[test]
    fn truncation_and_lies_fail_cleanly() {
        for data in [
            &b"\x80\x02X\xff\xff\xff\x7fab"[..],
            b"\x80\x02",
            b"\x80\x02h\x05.",
            b"\x80\x02t.",
            b"\x80\x02\x8b\xff\xff\xff\xff.",
            b"\x80\x02K\x01K\x02R.",
        ] {
            assert!(read(data, Policy::StateDict).is_err(), "{data:?}");
        }
    }

    #[test]
    fn deep_nesting_is_bounded() {
        // MARK ... LIST, nested.
        let mut nested = b"\x80\x02".to_vec();
        nested.extend(std::iter::repeat_n(b'(', MAX_DEPTH + 10));
        nested.extend(std::iter::repeat_n(b'l', MAX_DEPTH + 10));
        nested.push(b'.');
        assert!(read(&nested, Policy::StateDict).is_err());
        // Many empty lists, then APPEND each into the one below.
        let mut chain = b"\x80\x02".to_vec();
        chain.extend(std::iter::repeat_n(b']', MAX_DEPTH + 10));
        chain.extend(std::iter::repeat_n(b'a', MAX_DEPTH + 9));
        chain.push(b'.');
        assert!(read(&chain, Policy::StateDict).is_err());
    }

    #[test]
    fn memo_bombs_are_bounded() {
        // x = [0]; repeat: x = [x, x] via DUP + TUPLE2 style copying.
        let mut bomb = b"\x80\x02]K\x00a".to_vec();
        for _ in 0..64 {
            bomb.extend(b"2\x86"); // DUP, TUPLE2
        }
        bomb.push(b'.');
        let err = read(&bomb, Policy::StateDict).unwrap_err();
        assert!(err.to_string().contains("copied"), "{err}");
    }
}
