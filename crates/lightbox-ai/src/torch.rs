//! Reads PyTorch's zip archives without Python: TorchScript modules (`torch.jit.save`, as
//! deepbet ships) and checkpoints (`torch.save`, as nnU-Net's `checkpoint_final.pth`). A small
//! pickle machine rebuilds the object tree from `<archive>/data.pkl` (classes stay names, tensors
//! become references to their storage), and every tensor is named by its path through module
//! attributes and dictionary keys (`down1.block1.double_conv.0.weight`,
//! `network_weights.encoder.stages.0…`). Only float32 storages are read; anything else is
//! refused with the tensor's name.
//!
//! The same machine reads plain pickles of plain data (`read_pickle`), such as nnU-Net v1's
//! `plans.pkl`: numbers, strings, lists, dictionaries, NumPy arrays and scalars become JSON.
//! Nothing is ever called: a class or function the pickle names stays a name.

use std::collections::BTreeMap;
use std::io::Read;

/// A tensor found in an archive: its path, shape and values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

#[derive(Clone, Debug, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String),
    Object {
        class: String,
        state: Box<Value>,
    },
    Storage {
        key: String,
        dtype: String,
    },
    Tensor {
        key: String,
        dtype: String,
        offset: usize,
        size: Vec<usize>,
        stride: Vec<usize>,
    },
    /// A NumPy dtype: byte order, kind and size (`<f8`, `|b1`).
    Dtype(String),
    /// A NumPy array: its dtype, shape and order, and its raw bytes (or, for object arrays, a
    /// list of values).
    Array {
        dtype: String,
        shape: Vec<usize>,
        fortran: bool,
        data: Box<Value>,
    },
    /// Something built by a call we do not model.
    Opaque(String),
    Mark,
}

/// Containers nest at most this deep: a deeper pickle is refused (its tree would overflow the
/// stack when walked or dropped).
const MAX_DEPTH: usize = 200;

/// Values the memo may copy over a whole pickle: a crafted pickle can double its tree with every
/// copy; a model file copies a few names and classes.
const MAX_COPIES: usize = 5_000_000;

/// How deeply `v` nests (1 for a leaf). Bounded: no value deeper than `MAX_DEPTH` is built.
fn depth(v: &Value) -> usize {
    match v {
        Value::Tuple(items) | Value::List(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Dict(items) => 1 + items.iter().map(|(k, v)| depth(k).max(depth(v))).max().unwrap_or(0),
        Value::Object { state, .. } => 1 + depth(state),
        Value::Array { data, .. } => 1 + depth(data),
        _ => 1,
    }
}

/// The values in `v`, counted up to `limit`.
fn count(v: &Value, limit: usize) -> usize {
    // Bytes weigh by their length: copying a large buffer is not free either.
    let mut n = match v {
        Value::Bytes(b) => 1 + b.len() / 256,
        _ => 1,
    };
    let add = |c: &Value, n: &mut usize| {
        if *n < limit {
            *n += count(c, limit - *n);
        }
    };
    match v {
        Value::Tuple(items) | Value::List(items) => items.iter().for_each(|c| add(c, &mut n)),
        Value::Dict(items) => items.iter().for_each(|(k, c)| {
            add(k, &mut n);
            add(c, &mut n);
        }),
        Value::Object { state, .. } | Value::Array { data: state, .. } => add(state, &mut n),
        _ => {}
    }
    n
}

fn shallow_enough(v: Value) -> Result<Value, String> {
    if depth(&v) > MAX_DEPTH {
        return Err(format!("the pickle nests deeper than {MAX_DEPTH} levels"));
    }
    Ok(v)
}

fn as_usize(v: &Value) -> Result<usize, String> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as usize),
        other => Err(format!("expected a size, found {other:?}")),
    }
}

fn sizes(v: &Value) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(items) | Value::List(items) => items.iter().map(as_usize).collect(),
        other => Err(format!("expected a shape, found {other:?}")),
    }
}

/// Runs the pickle program `data` and returns its result.
fn unpickle(data: &[u8]) -> Result<Value, String> {
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: BTreeMap<u32, Value> = BTreeMap::new();
    let mut copies_left = MAX_COPIES;
    // Every memo store and fetch copies a tree; the budget stops a pickle that copies without end.
    let mut copy = |v: &Value| -> Result<Value, String> {
        let n = count(v, copies_left.saturating_add(1));
        if n > copies_left {
            return Err("the pickle copies more values than a model file holds".into());
        }
        copies_left -= n;
        Ok(v.clone())
    };
    let mut pos = 0usize;
    let take = |pos: &mut usize, n: usize| -> Result<&[u8], String> {
        let end = pos.checked_add(n).filter(|&e| e <= data.len()).ok_or("the pickle ends early")?;
        let s = &data[*pos..end];
        *pos = end;
        Ok(s)
    };
    let line = |pos: &mut usize| -> Result<String, String> {
        let rest = &data[*pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or("a GLOBAL without its newline")?;
        *pos += end + 1;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    };
    let pop = |stack: &mut Vec<Value>| stack.pop().ok_or_else(|| "the pickle pops an empty stack".to_owned());
    let pop_mark = |stack: &mut Vec<Value>| -> Result<Vec<Value>, String> {
        let at = stack.iter().rposition(|v| *v == Value::Mark).ok_or("no MARK on the stack")?;
        let items = stack.split_off(at + 1);
        stack.pop();
        Ok(items)
    };
    loop {
        let op = *take(&mut pos, 1)?.first().ok_or("empty")?;
        match op {
            0x80 => {
                take(&mut pos, 1)?;
            } // PROTO
            0x95 => {
                take(&mut pos, 8)?;
            } // FRAME
            b'.' => return pop(&mut stack), // STOP
            b'(' => stack.push(Value::Mark),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'K' => stack.push(Value::Int(i64::from(take(&mut pos, 1)?[0]))),
            b'M' => {
                let b = take(&mut pos, 2)?;
                stack.push(Value::Int(i64::from(u16::from_le_bytes([b[0], b[1]]))));
            }
            b'J' => {
                let b = take(&mut pos, 4)?;
                stack.push(Value::Int(i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))));
            }
            0x8a => {
                // LONG1: little-endian two's complement of n bytes.
                let n = usize::from(take(&mut pos, 1)?[0]);
                let b = take(&mut pos, n)?;
                if n > 8 {
                    return Err("an integer wider than 64 bits".into());
                }
                let mut v: i64 = 0;
                for (i, byte) in b.iter().enumerate() {
                    v |= i64::from(*byte) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Value::Int(v));
            }
            b'G' => {
                let b = take(&mut pos, 8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                stack.push(Value::Float(f64::from_be_bytes(a)));
            }
            b'X' => {
                let b = take(&mut pos, 4)?;
                let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
                stack.push(Value::Str(String::from_utf8_lossy(take(&mut pos, n)?).into_owned()));
            }
            0x8c | b'U' => {
                // SHORT_BINUNICODE, SHORT_BINSTRING (a Python 2 str)
                let n = usize::from(take(&mut pos, 1)?[0]);
                stack.push(Value::Str(String::from_utf8_lossy(take(&mut pos, n)?).into_owned()));
            }
            b'T' => {
                // BINSTRING
                let b = take(&mut pos, 4)?;
                let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
                stack.push(Value::Str(String::from_utf8_lossy(take(&mut pos, n)?).into_owned()));
            }
            0x8d => {
                // BINUNICODE8
                let n = usize::try_from(u64::from_le_bytes(eight(take(&mut pos, 8)?))).map_err(|e| e.to_string())?;
                stack.push(Value::Str(String::from_utf8_lossy(take(&mut pos, n)?).into_owned()));
            }
            b'C' => {
                // SHORT_BINBYTES
                let n = usize::from(take(&mut pos, 1)?[0]);
                stack.push(Value::Bytes(take(&mut pos, n)?.to_vec()));
            }
            b'B' => {
                // BINBYTES
                let b = take(&mut pos, 4)?;
                let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
                stack.push(Value::Bytes(take(&mut pos, n)?.to_vec()));
            }
            0x8e => {
                // BINBYTES8
                let n = usize::try_from(u64::from_le_bytes(eight(take(&mut pos, 8)?))).map_err(|e| e.to_string())?;
                stack.push(Value::Bytes(take(&mut pos, n)?.to_vec()));
            }
            0x8b => {
                // LONG4: only as wide as an i64 holds.
                let b = take(&mut pos, 4)?;
                let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
                if n > 8 {
                    return Err("an integer wider than 64 bits".into());
                }
                let b = take(&mut pos, n)?;
                let mut a = [if b.last().is_some_and(|x| x & 0x80 != 0) { 0xff } else { 0 }; 8];
                a[..n].copy_from_slice(b);
                stack.push(Value::Int(i64::from_le_bytes(a)));
            }
            0x8f => stack.push(Value::List(Vec::new())), // EMPTY_SET: a set is read as a list
            0x90 => {
                // ADDITEMS
                let items = pop_mark(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(list)) => list.extend(items),
                    _ => return Err("ADDITEMS onto something that is not a set".into()),
                }
            }
            0x91 => {
                // FROZENSET
                let items = pop_mark(&mut stack)?;
                stack.push(shallow_enough(Value::List(items))?);
            }
            b'c' => {
                let module = line(&mut pos)?;
                let name = line(&mut pos)?;
                stack.push(Value::Global(format!("{module}.{name}")));
            }
            0x93 => {
                // STACK_GLOBAL
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(format!("{m}.{n}"))),
                    _ => return Err("STACK_GLOBAL without two names".into()),
                }
            }
            b'q' => {
                let k = u32::from(take(&mut pos, 1)?[0]);
                memo.insert(k, copy(stack.last().ok_or("BINPUT on an empty stack")?)?);
            }
            b'r' => {
                let b = take(&mut pos, 4)?;
                memo.insert(u32::from_le_bytes([b[0], b[1], b[2], b[3]]), copy(stack.last().ok_or("empty stack")?)?);
            }
            0x94 => {
                let k = memo.len() as u32;
                memo.insert(k, copy(stack.last().ok_or("MEMOIZE on an empty stack")?)?);
            }
            b'h' => {
                let k = u32::from(take(&mut pos, 1)?[0]);
                stack.push(copy(memo.get(&k).ok_or(format!("memo {k} was never stored"))?)?);
            }
            b'j' => {
                let b = take(&mut pos, 4)?;
                let k = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                stack.push(copy(memo.get(&k).ok_or(format!("memo {k} was never stored"))?)?);
            }
            b')' => stack.push(Value::Tuple(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b'}' => stack.push(Value::Dict(Vec::new())),
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(shallow_enough(Value::Tuple(items))?);
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let at = stack.len().checked_sub(n).ok_or("TUPLEn on a short stack")?;
                let items = stack.split_off(at);
                stack.push(shallow_enough(Value::Tuple(items))?);
            }
            b'l' => {
                let items = pop_mark(&mut stack)?;
                stack.push(shallow_enough(Value::List(items))?);
            }
            b'a' | b'e' => {
                let items = if op == b'a' { vec![pop(&mut stack)?] } else { pop_mark(&mut stack)? };
                if items.iter().any(|v| depth(v) >= MAX_DEPTH) {
                    return Err(format!("the pickle nests deeper than {MAX_DEPTH} levels"));
                }
                match stack.last_mut() {
                    Some(Value::List(list)) => list.extend(items),
                    _ => return Err("APPEND onto something that is not a list".into()),
                }
            }
            b's' | b'u' => {
                let items = if op == b's' {
                    let v = pop(&mut stack)?;
                    let k = pop(&mut stack)?;
                    vec![k, v]
                } else {
                    pop_mark(&mut stack)?
                };
                if items.len() % 2 != 0 {
                    return Err("SETITEMS with an odd number of items".into());
                }
                if items.iter().any(|v| depth(v) >= MAX_DEPTH) {
                    return Err(format!("the pickle nests deeper than {MAX_DEPTH} levels"));
                }
                let pairs = items.chunks(2).map(|kv| (kv[0].clone(), kv[1].clone()));
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.extend(pairs),
                    Some(Value::Object { state, .. }) if matches!(**state, Value::Dict(_)) => {
                        if let Value::Dict(d) = state.as_mut() {
                            d.extend(pairs);
                        }
                    }
                    _ => return Err("SETITEMS onto something that is not a dict".into()),
                }
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                stack.push(match pid {
                    Value::Tuple(items) if items.first() == Some(&Value::Str("storage".into())) && items.len() >= 3 => {
                        let dtype = match &items[1] {
                            Value::Global(g) => g.rsplit('.').next().unwrap_or_default().to_owned(),
                            // Never a value's own text: fed back through the pickle, it would
                            // grow with every round (a fuzzer found one that filled memory).
                            _ => "an unknown storage type".to_owned(),
                        };
                        let key = match &items[2] {
                            Value::Str(s) => s.clone(),
                            other => return Err(format!("a storage key that is not a string: {other:?}")),
                        };
                        Value::Storage { key, dtype }
                    }
                    _ => Value::Opaque("a persistent id".into()),
                });
            }
            b'R' => {
                let args = pop(&mut stack)?;
                let func = pop(&mut stack)?;
                stack.push(match (&func, args) {
                    (Value::Global(g), Value::Tuple(a))
                        if g.ends_with("_rebuild_tensor_v2") || g.ends_with("_rebuild_tensor") =>
                    {
                        let (key, dtype) = match a.first() {
                            Some(Value::Storage { key, dtype }) => (key.clone(), dtype.clone()),
                            other => return Err(format!("a tensor without its storage: {other:?}")),
                        };
                        let offset = as_usize(a.get(1).ok_or("a tensor without its offset")?)?;
                        let size = sizes(a.get(2).ok_or("a tensor without its size")?)?;
                        let stride = sizes(a.get(3).ok_or("a tensor without its stride")?)?;
                        Value::Tensor { key, dtype, offset, size, stride }
                    }
                    (Value::Global(g), _) if g == "collections.OrderedDict" => Value::Dict(Vec::new()),
                    (Value::Global(g), Value::Tuple(a)) => {
                        numpy_call(g, a)?.unwrap_or_else(|| Value::Opaque(g.clone()))
                    }
                    (Value::Global(g), _) => Value::Opaque(g.clone()),
                    _ => Value::Opaque("a call".into()),
                });
            }
            0x81 | 0x92 => {
                // NEWOBJ: cls.__new__(cls, *args); NEWOBJ_EX: also **kwargs
                if op == 0x92 {
                    pop(&mut stack)?;
                }
                let _args = pop(&mut stack)?;
                let cls = pop(&mut stack)?;
                let class = match cls {
                    Value::Global(g) => g,
                    _ => "an unknown class".to_owned(),
                };
                stack.push(Value::Object { class, state: Box::new(Value::None) });
            }
            b'b' => {
                let state = pop(&mut stack)?;
                if depth(&state) >= MAX_DEPTH {
                    return Err(format!("the pickle nests deeper than {MAX_DEPTH} levels"));
                }
                match stack.last_mut() {
                    Some(Value::Object { state: s, .. }) => **s = state,
                    Some(array @ Value::Array { .. }) => *array = build_array(state)?,
                    // A dtype's state: (version, byte order, …).
                    Some(Value::Dtype(d)) => {
                        if let Value::Tuple(s) = &state
                            && let Some(Value::Str(order)) = s.get(1)
                            && matches!(order.as_str(), "<" | ">" | "|" | "=")
                        {
                            d.replace_range(..1, order);
                        }
                    }
                    // BUILD on a dict (an OrderedDict's __setstate__) or anything else: keep the
                    // object; its state holds nothing we read.
                    Some(_) => {}
                    None => return Err("BUILD on an empty stack".into()),
                }
            }
            b'0' => {
                pop(&mut stack)?;
            }
            b'2' => {
                let top = copy(stack.last().ok_or("DUP on an empty stack")?)?;
                stack.push(top);
            }
            other => return Err(format!("pickle opcode 0x{other:02x} at byte {} is not supported", pos - 1)),
        }
    }
}

fn eight(b: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8.min(b.len())]);
    a
}

/// The values NumPy and Python 3 pickle through a call: arrays (`_reconstruct`, then BUILD, or
/// `_frombuffer`), dtypes, scalars, `bytes` in protocol 2 (`_codecs.encode`) and sets. `None`
/// for anything else.
fn numpy_call(function: &str, args: Vec<Value>) -> Result<Option<Value>, String> {
    let name = function.rsplit('.').next().unwrap_or_default();
    let numpy = function.starts_with("numpy.");
    Ok(Some(match (name, args.as_slice()) {
        ("_reconstruct", _) if numpy => {
            Value::Array { dtype: String::new(), shape: Vec::new(), fortran: false, data: Box::new(Value::None) }
        }
        ("dtype", [Value::Str(code), ..]) if numpy => {
            let order = if code.ends_with('1') || code.starts_with('O') { "|" } else { "<" };
            Value::Dtype(format!("{order}{code}"))
        }
        ("scalar", [Value::Dtype(dtype), Value::Bytes(raw)]) if numpy => {
            let mut values = decode(dtype, raw)?;
            if values.len() != 1 {
                return Err(format!("a NumPy {dtype} scalar of {} bytes", raw.len()));
            }
            values.remove(0)
        }
        ("_frombuffer", [data, Value::Dtype(dtype), shape, Value::Str(order), ..]) if numpy => {
            build_array(Value::Tuple(vec![
                Value::Int(1),
                shape.clone(),
                Value::Dtype(dtype.clone()),
                Value::Bool(order == "F"),
                data.clone(),
            ]))?
        }
        ("encode", [Value::Str(text), Value::Str(codec)]) if function == "_codecs.encode" && codec == "latin1" => {
            let bytes: Option<Vec<u8>> = text.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect();
            Value::Bytes(bytes.ok_or("_codecs.encode of a character above latin-1")?)
        }
        ("set" | "frozenset", [Value::List(items)])
            if function.starts_with("builtins.") || function.starts_with("__builtin__.") =>
        {
            Value::List(items.clone())
        }
        _ => return Ok(None),
    }))
}

/// A NumPy array from its BUILD state `(version, shape, dtype, is_fortran, raw data)`.
fn build_array(state: Value) -> Result<Value, String> {
    let Value::Tuple(mut s) = state else { return Err("a NumPy array without its state".into()) };
    if s.len() == 4 {
        // Version 0 has no version field.
        s.insert(0, Value::Int(0));
    }
    let [_, shape, dtype, fortran, data]: [Value; 5] =
        s.try_into().map_err(|_| "a NumPy array state of the wrong length".to_owned())?;
    let shape = sizes(&shape)?;
    let Value::Dtype(dtype) = dtype else { return Err(format!("a NumPy array whose dtype is {dtype:?}")) };
    let fortran = matches!(fortran, Value::Bool(true) | Value::Int(1));
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("a NumPy array whose shape overflows")?;
    match &data {
        Value::Bytes(raw) => {
            let width = dtype_width(&dtype)?;
            if raw.len() != n.saturating_mul(width) {
                return Err(format!("a NumPy {dtype} array of shape {shape:?} with {} bytes", raw.len()));
            }
        }
        Value::List(items) if items.len() == n => {}
        other => return Err(format!("a NumPy array of shape {shape:?} holding {other:?}")),
    }
    Ok(Value::Array { dtype, shape, fortran, data: Box::new(data) })
}

/// Bytes per element of a numeric NumPy dtype (`<f8` → 8).
fn dtype_width(dtype: &str) -> Result<usize, String> {
    let kind = dtype.get(1..2).unwrap_or_default();
    let width: usize = dtype.get(2..).and_then(|w| w.parse().ok()).unwrap_or(0);
    match (kind, width) {
        ("f", 2 | 4 | 8) | ("i" | "u", 1 | 2 | 4 | 8) | ("b", 1) => Ok(width),
        _ => Err(format!("NumPy dtype {dtype} is not read (numbers and booleans are)")),
    }
}

/// The values of raw NumPy data of `dtype`.
fn decode(dtype: &str, raw: &[u8]) -> Result<Vec<Value>, String> {
    let width = dtype_width(dtype)?;
    let big = dtype.starts_with('>');
    let kind = &dtype[1..2];
    Ok(raw
        .chunks_exact(width)
        .map(|c| {
            let mut a = [0u8; 8];
            if big {
                a[8 - width..].copy_from_slice(c);
                a.reverse();
            } else {
                a[..width].copy_from_slice(c);
            }
            let bits = u64::from_le_bytes(a);
            let signed = |w: usize| {
                let shift = 64 - 8 * w as u32;
                ((bits << shift) as i64) >> shift
            };
            match (kind, width) {
                ("f", 8) => Value::Float(f64::from_bits(bits)),
                ("f", 4) => Value::Float(f64::from(f32::from_bits(bits as u32))),
                ("f", _) => Value::Float(f64::from(half_to_f32(bits as u16))),
                ("i", w) => Value::Int(signed(w)),
                ("b", _) => Value::Bool(bits != 0),
                // Unsigned values above i64's range keep their bits.
                _ => Value::Int(bits as i64),
            }
        })
        .collect())
}

fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f32::from(h & 0x3ff);
    sign * match exp {
        0 => frac * 2f32.powi(-24),
        31 if frac == 0.0 => f32::INFINITY,
        31 => f32::NAN,
        e => (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

/// A value as JSON: dictionaries become objects (keys as text), tuples, lists and sets arrays,
/// NumPy arrays nested arrays of their shape (C order), NumPy scalars numbers. A class or
/// function stays its dotted name; what a call built that we do not model becomes `null`.
fn to_json(value: &Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match value {
        Value::None | Value::Mark | Value::Opaque(_) | Value::Storage { .. } | Value::Tensor { .. } => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Str(s) | Value::Global(s) | Value::Dtype(s) => J::String(s.clone()),
        Value::Bytes(b) => J::Array(b.iter().map(|&x| J::from(x)).collect()),
        Value::Tuple(items) | Value::List(items) => J::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Value::Dict(items) => {
            let mut map = serde_json::Map::new();
            for (k, v) in items {
                let key = match k {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    Value::Float(f) => f.to_string(),
                    Value::Bool(b) => if *b { "True" } else { "False" }.to_owned(),
                    _ => "(a key that is neither text nor a number)".to_owned(),
                };
                map.insert(key, to_json(v)?);
            }
            J::Object(map)
        }
        Value::Object { state, .. } => to_json(state)?,
        Value::Array { dtype, shape, fortran, data } => {
            let flat: Vec<J> = match data.as_ref() {
                Value::Bytes(raw) => decode(dtype, raw)?.iter().map(to_json).collect::<Result<_, _>>()?,
                Value::List(items) => items.iter().map(to_json).collect::<Result<_, _>>()?,
                _ => Vec::new(),
            };
            nest(&flat, shape, *fortran)
        }
    })
}

/// `flat` (C or Fortran order) as arrays nested by `shape`; a 0-d array is its value.
fn nest(flat: &[serde_json::Value], shape: &[usize], fortran: bool) -> serde_json::Value {
    fn build(flat: &[serde_json::Value], shape: &[usize], strides: &[usize], at: usize) -> serde_json::Value {
        match shape.split_first() {
            None => flat.get(at).cloned().unwrap_or(serde_json::Value::Null),
            Some((&n, rest)) => serde_json::Value::Array(
                (0..n).map(|i| build(flat, rest, &strides[1..], at + i * strides[0])).collect(),
            ),
        }
    }
    let mut strides = vec![1usize; shape.len()];
    if fortran {
        for d in 1..shape.len() {
            strides[d] = strides[d - 1] * shape[d - 1];
        }
    } else {
        for d in (0..shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * shape[d + 1];
        }
    }
    build(flat, shape, &strides, 0)
}

/// A plain pickle of plain data (nnU-Net v1's `plans.pkl` and `model_best.model.pkl`) as JSON.
/// Classes and functions are never looked up, let alone called: they stay names.
pub fn read_pickle(bytes: &[u8]) -> Result<serde_json::Value, String> {
    to_json(&unpickle(bytes)?)
}

/// Every tensor in the tree with its dotted path.
fn walk(value: &Value, path: &str, out: &mut Vec<(String, Value)>) {
    let join = |key: &str| if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") };
    match value {
        Value::Tensor { .. } => out.push((path.to_owned(), value.clone())),
        Value::Object { state, .. } => walk(state, path, out),
        Value::Dict(items) => {
            for (k, v) in items {
                let key = match k {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => continue,
                };
                walk(v, &join(&key), out);
            }
        }
        Value::List(items) | Value::Tuple(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, &join(&i.to_string()), out);
            }
        }
        _ => {}
    }
}

/// The float32 tensors of a PyTorch zip archive (TorchScript or `torch.save`), by path, in the
/// order the pickle names them.
pub fn read_zip(bytes: &[u8]) -> Result<Vec<NamedTensor>, String> {
    read_zip_where(bytes, &|_| true)
}

/// Like `read_zip`, for the tensors whose path `keep` accepts: a checkpoint's training state
/// (optimiser moments, of any type) is neither read nor checked.
pub fn read_zip_where(bytes: &[u8], keep: &dyn Fn(&str) -> bool) -> Result<Vec<NamedTensor>, String> {
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| format!("not a zip archive: {e}"))?;
    let pkl = pickle_name(&archive)?;
    let root = pkl.trim_end_matches("data.pkl").to_owned();
    let mut read = |name: &str| read_entry(&mut archive, bytes.len(), name);
    let tree = unpickle(&read(&pkl)?)?;
    let mut found = Vec::new();
    walk(&tree, "", &mut found);
    let mut storages: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut tensors = Vec::new();
    for (name, t) in found {
        let Value::Tensor { key, dtype, offset, size, stride } = t else { continue };
        if !keep(&name) {
            continue;
        }
        if dtype != "FloatStorage" {
            return Err(format!("{name}: {dtype} tensors are not supported (float32 only)"));
        }
        let numel = size
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or(format!("{name}: its shape {size:?} overflows"))?;
        // Contiguous, row-major strides.
        let mut expected = vec![0usize; size.len()];
        let mut step = 1;
        for d in (0..size.len()).rev() {
            expected[d] = step;
            step = step.saturating_mul(size[d]);
        }
        if numel > 1 && size.iter().zip(&stride).zip(&expected).any(|((s, a), b)| *s > 1 && a != b) {
            return Err(format!("{name}: strides {stride:?} for shape {size:?} are not contiguous"));
        }
        if !storages.contains_key(&key) {
            let data = read(&format!("{root}data/{key}"))?;
            storages.insert(key.clone(), data);
        }
        let data = &storages[&key];
        let range = offset.checked_add(numel).and_then(|e| Some((offset.checked_mul(4)?, e.checked_mul(4)?)));
        let (start, end) = range.ok_or(format!("{name}: offset {offset} and size {numel} overflow"))?;
        let bytes = data.get(start..end).ok_or(format!("{name}: storage {key} is shorter than the tensor"))?;
        let values = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        tensors.push((name, size, values));
    }
    Ok(tensors)
}

/// The name of a PyTorch archive's pickle, `<archive>/data.pkl`.
fn pickle_name(archive: &zip::ZipArchive<std::io::Cursor<&[u8]>>) -> Result<String, String> {
    (0..archive.len())
        .filter_map(|i| archive.name_for_index(i).and_then(|n| n.ok()).map(|n| n.into_owned()))
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .ok_or_else(|| "no <archive>/data.pkl: not a PyTorch archive".to_owned())
}

/// One entry of an archive of `archive_len` bytes, read whole.
fn read_entry(
    archive: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>,
    archive_len: usize,
    name: &str,
) -> Result<Vec<u8>, String> {
    let entry = archive.by_name(name).map_err(|e| format!("{name}: {e}"))?;
    // An entry holds at most what it declares, and a model's entries are not more than a
    // thousand times their archive: a crafted archive cannot inflate without bound.
    let limit = entry.size().min((archive_len as u64).saturating_mul(1000));
    let mut buf = Vec::new();
    entry.take(limit).read_to_end(&mut buf).map_err(|e| format!("{name}: {e}"))?;
    Ok(buf)
}

/// The plain value under `key` in the dict a PyTorch archive holds (a checkpoint's
/// `inference_allowed_mirroring_axes`, say) as JSON: Python's `None` is `null`, tuples are
/// arrays, tensors `null`. `None` when the dict has no such key.
pub fn read_zip_entry(bytes: &[u8], key: &str) -> Result<Option<serde_json::Value>, String> {
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| format!("not a zip archive: {e}"))?;
    let pkl = pickle_name(&archive)?;
    let tree = unpickle(&read_entry(&mut archive, bytes.len(), &pkl)?)?;
    let items = match &tree {
        Value::Dict(items) => items,
        Value::Object { state, .. } => match state.as_ref() {
            Value::Dict(items) => items,
            _ => return Ok(None),
        },
        _ => return Ok(None),
    };
    items.iter().find(|(k, _)| matches!(k, Value::Str(s) if s == key)).map(|(_, v)| to_json(v)).transpose()
}

/// A plain value written beside a checkpoint's tensors by [`write_zip_with`].
#[derive(Clone, Copy, Debug)]
pub enum PlainValue<'a> {
    /// Python's `None`.
    None,
    /// A tuple of integers.
    Ints(&'a [usize]),
}

/// Writes `tensors` as `torch.save({key: OrderedDict(...)}, path)` would (zip archive, pickle
/// protocol 2, one float32 storage per tensor): nnU-Net checkpoints are this shape. Lightbox
/// uses it to make test checkpoints; `read_zip` reads it back.
pub fn write_zip(path: &std::path::Path, key: &str, tensors: &[NamedTensor]) -> std::io::Result<()> {
    write_zip_with(path, key, tensors, &[])
}

/// [`write_zip`] with plain values beside the tensors in the saved dict, as nnU-Net v2 saves
/// `inference_allowed_mirroring_axes` beside `network_weights`.
pub fn write_zip_with(
    path: &std::path::Path,
    key: &str,
    tensors: &[NamedTensor],
    extra: &[(&str, PlainValue<'_>)],
) -> std::io::Result<()> {
    use std::io::Write;
    fn text(p: &mut Vec<u8>, s: &str) {
        p.push(b'X');
        p.extend_from_slice(&(s.len() as u32).to_le_bytes());
        p.extend_from_slice(s.as_bytes());
    }
    fn int(p: &mut Vec<u8>, v: usize) {
        p.push(b'J');
        p.extend_from_slice(&(v as i32).to_le_bytes());
    }
    fn ints(p: &mut Vec<u8>, values: &[usize]) {
        p.push(b'(');
        for &v in values {
            int(p, v);
        }
        p.push(b't');
    }
    let mut p = vec![0x80, 2, b'}', b'('];
    text(&mut p, key);
    p.extend_from_slice(b"ccollections\nOrderedDict\n)R(");
    for (n, (name, shape, _)) in tensors.iter().enumerate() {
        text(&mut p, name);
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        text(&mut p, "storage");
        p.extend_from_slice(b"ctorch\nFloatStorage\n");
        text(&mut p, &n.to_string());
        text(&mut p, "cpu");
        int(&mut p, shape.iter().product());
        p.extend_from_slice(b"tQ");
        int(&mut p, 0);
        ints(&mut p, shape);
        let mut stride = vec![1usize; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * shape[d + 1];
        }
        ints(&mut p, &stride);
        p.extend_from_slice(b"\x89ccollections\nOrderedDict\n)RtR");
    }
    // The OrderedDict's items end; the outer dict's other entries follow.
    p.push(b'u');
    for (name, value) in extra {
        text(&mut p, name);
        match value {
            PlainValue::None => p.push(b'N'),
            PlainValue::Ints(values) => ints(&mut p, values),
        }
    }
    p.extend_from_slice(b"u.");
    let file = std::fs::File::create(path)?;
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let io = |e: zip::result::ZipError| std::io::Error::other(e.to_string());
    zip.start_file("archive/data.pkl", options).map_err(io)?;
    zip.write_all(&p)?;
    for (n, (_, _, values)) in tensors.iter().enumerate() {
        zip.start_file(format!("archive/data/{n}"), options).map_err(io)?;
        for v in values {
            zip.write_all(&v.to_le_bytes())?;
        }
    }
    zip.start_file("archive/version", options).map_err(io)?;
    zip.write_all(b"3\n")?;
    zip.finish().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_written_pickle_rebuilds_an_ordered_dict_of_tensors() -> Result<(), String> {
        // {"w": rebuild(storage("0", FloatStorage), 1, (2,), (1,)), "n": 3} as an OrderedDict.
        let mut p = vec![0x80, 2];
        p.extend_from_slice(b"ccollections\nOrderedDict\n)R(");
        p.extend_from_slice(&[0x8c, 1, b'w']);
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.extend_from_slice(b"(");
        p.extend_from_slice(&[0x8c, 7]);
        p.extend_from_slice(b"storage");
        p.extend_from_slice(b"ctorch\nFloatStorage\n");
        p.extend_from_slice(&[0x8c, 1, b'0', 0x8c, 3]);
        p.extend_from_slice(b"cpu");
        p.extend_from_slice(&[b'K', 3, b't', b'Q', b'K', 1, b'K', 2, 0x85, b'K', 1, 0x85, 0x89, b'N', b't', b'R']);
        p.extend_from_slice(&[0x8c, 1, b'n', b'K', 3, b'u', b'.']);
        let tree = unpickle(&p)?;
        let mut found = Vec::new();
        walk(&tree, "", &mut found);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "w");
        assert!(matches!(&found[0].1, Value::Tensor { offset: 1, size, .. } if size == &vec![2]));
        Ok(())
    }

    #[test]
    fn a_written_checkpoint_reads_back_with_its_names_shapes_and_values() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("checkpoint_final.pth");
        let tensors = vec![
            ("encoder.w".to_owned(), vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            ("b".to_owned(), vec![1], vec![-0.5]),
        ];
        write_zip(&path, "network_weights", &tensors).map_err(|e| e.to_string())?;
        let back = read_zip(&std::fs::read(&path).map_err(|e| e.to_string())?)?;
        let expected: Vec<NamedTensor> =
            tensors.into_iter().map(|(n, s, v)| (format!("network_weights.{n}"), s, v)).collect();
        assert_eq!(back, expected);
        Ok(())
    }

    #[test]
    fn plain_values_beside_the_tensors_read_back_by_key() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("checkpoint_final.pth");
        let tensors = vec![("w".to_owned(), vec![2], vec![1.0, 2.0])];
        let extra = [("inference_allowed_mirroring_axes", PlainValue::Ints(&[0, 2])), ("trainer", PlainValue::None)];
        write_zip_with(&path, "network_weights", &tensors, &extra).map_err(|e| e.to_string())?;
        let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
        assert_eq!(read_zip_entry(&bytes, "inference_allowed_mirroring_axes")?, Some(serde_json::json!([0, 2])));
        assert_eq!(read_zip_entry(&bytes, "trainer")?, Some(serde_json::Value::Null));
        assert_eq!(read_zip_entry(&bytes, "current_epoch")?, None);
        // The tensors are as they were.
        assert_eq!(read_zip(&bytes)?, vec![("network_weights.w".to_owned(), vec![2], vec![1.0, 2.0])]);
        Ok(())
    }

    #[test]
    fn numpy_pickles_of_both_protocols_read_as_json() -> Result<(), String> {
        // Written by Python 3.11 and NumPy 2.4: an OrderedDict with an int key, a float64 matrix,
        // a Fortran-ordered int32 array, a NumPy scalar, a bool array, a tuple, a big-endian
        // float32 array and a set (tests/fixtures/pickle).
        let expected = serde_json::json!({
            "0": [[1.5, 2.0], [3.0, 4.0]],
            "f": [[0, 1, 2], [3, 4, 5]],
            "s": 0.25,
            "b": [true, false],
            "t": [1, "x", null],
            "big": [1.0],
            "set": [3],
        });
        for (name, bytes) in [
            ("protocol 2", &include_bytes!("../../../tests/fixtures/pickle/numpy-protocol2.pkl")[..]),
            ("protocol 4", &include_bytes!("../../../tests/fixtures/pickle/numpy-protocol4.pkl")[..]),
        ] {
            assert_eq!(read_pickle(bytes)?, expected, "{name}");
        }
        Ok(())
    }

    #[test]
    fn numpy_arrays_whose_bytes_do_not_fit_their_shape_are_refused() {
        let p4 = include_bytes!("../../../tests/fixtures/pickle/numpy-protocol4.pkl");
        // Every truncation is an error, never a panic.
        for end in 0..p4.len() {
            assert!(read_pickle(&p4[..end]).is_err(), "{end}");
        }
        // The matrix's 32 bytes (`C` 0x20) claimed as 31: its shape no longer fits.
        let at = p4.windows(2).position(|w| w == [0x43, 0x20]).unwrap_or(0);
        let mut bad = p4.to_vec();
        bad[at + 1] = 0x1f;
        bad.remove(at + 2);
        let err = read_pickle(&bad).err().unwrap_or_default();
        assert!(err.contains("array of shape [2, 2] with 31 bytes"), "{err}");
    }

    #[test]
    fn broken_pickles_are_errors_not_panics() {
        for bad in [&b""[..], b"\x80", b"(t", b"h\x05", b"\xff", b"X\xff\xff\xff\x7f", b"u", b"R"] {
            assert!(unpickle(bad).is_err(), "{bad:?}");
        }
        // A list that doubles itself through the memo 40 times (330 bytes, 2⁴⁰ values).
        let mut doubling = b"]q\0".to_vec();
        for _ in 0..40 {
            doubling.extend_from_slice(b"(h\0h\0lq\0");
        }
        doubling.push(b'.');
        let err = unpickle(&doubling).err().unwrap_or_default();
        assert!(err.contains("copies more values"), "{err}");
        // A million nested tuples.
        let mut deep = vec![b'('; 1_000_000];
        deep.extend(std::iter::repeat_n(b't', 1_000_000));
        deep.push(b'.');
        let err = unpickle(&deep).err().unwrap_or_default();
        assert!(err.contains("nests deeper"), "{err}");
        assert!(read_zip(b"not a zip").is_err());
        // Found by the model_files fuzz target: persistent ids whose text grew with every
        // BINPERSID until memory ran out (tests/fixtures/fuzz).
        let grown = include_bytes!("../../../tests/fixtures/fuzz/oom-86160847aea0f069b6f0c5cc275b6633f6f74d9a");
        let _ = read_pickle(grown);
        let _ = read_zip(grown);
        let mut nested = b"\x80\x02X\x01\x00\x00\x00a".to_vec();
        for _ in 0..200 {
            nested.extend_from_slice(b")\x81Q");
        }
        nested.push(b'.');
        assert!(read_pickle(&nested).is_ok());
    }
}
