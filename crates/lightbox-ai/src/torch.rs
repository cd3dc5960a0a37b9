//! Reads PyTorch's zip archives without Python: TorchScript modules (`torch.jit.save`, as
//! deepbet ships) and checkpoints (`torch.save`, as nnU-Net's `checkpoint_final.pth`). A small
//! pickle machine rebuilds the object tree from `<archive>/data.pkl` (classes stay names, tensors
//! become references to their storage), and every tensor is named by its path through module
//! attributes and dictionary keys (`down1.block1.double_conv.0.weight`,
//! `network_weights.encoder.stages.0…`). Only float32 storages are read; anything else is
//! refused with the tensor's name.

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
        _ => 1,
    }
}

/// The values in `v`, counted up to `limit`.
fn count(v: &Value, limit: usize) -> usize {
    let mut n = 1;
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
        Value::Object { state, .. } => add(state, &mut n),
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
            0x8c => {
                let n = usize::from(take(&mut pos, 1)?[0]);
                stack.push(Value::Str(String::from_utf8_lossy(take(&mut pos, n)?).into_owned()));
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
                            other => format!("{other:?}"),
                        };
                        let key = match &items[2] {
                            Value::Str(s) => s.clone(),
                            other => return Err(format!("a storage key that is not a string: {other:?}")),
                        };
                        Value::Storage { key, dtype }
                    }
                    other => Value::Opaque(format!("persistent id {other:?}")),
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
                    (Value::Global(g), _) => Value::Opaque(g.clone()),
                    _ => Value::Opaque("a call".into()),
                });
            }
            0x81 => {
                // NEWOBJ: cls.__new__(cls, *args)
                let _args = pop(&mut stack)?;
                let cls = pop(&mut stack)?;
                let class = match cls {
                    Value::Global(g) => g,
                    other => format!("{other:?}"),
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
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| format!("not a zip archive: {e}"))?;
    let pkl = (0..archive.len())
        .filter_map(|i| archive.name_for_index(i).and_then(|n| n.ok()).map(|n| n.into_owned()))
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .ok_or("no <archive>/data.pkl: not a PyTorch archive")?;
    let root = pkl.trim_end_matches("data.pkl").to_owned();
    let mut read = |name: &str| -> Result<Vec<u8>, String> {
        let entry = archive.by_name(name).map_err(|e| format!("{name}: {e}"))?;
        // An entry holds at most what it declares, and a model's entries are not more than a
        // thousand times their archive: a crafted archive cannot inflate without bound.
        let limit = entry.size().min((bytes.len() as u64).saturating_mul(1000));
        let mut buf = Vec::new();
        entry.take(limit).read_to_end(&mut buf).map_err(|e| format!("{name}: {e}"))?;
        Ok(buf)
    };
    let tree = unpickle(&read(&pkl)?)?;
    let mut found = Vec::new();
    walk(&tree, "", &mut found);
    let mut storages: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut tensors = Vec::new();
    for (name, t) in found {
        let Value::Tensor { key, dtype, offset, size, stride } = t else { continue };
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

/// Writes `tensors` as `torch.save({key: OrderedDict(...)}, path)` would (zip archive, pickle
/// protocol 2, one float32 storage per tensor): nnU-Net checkpoints are this shape. Lightbox
/// uses it to make test checkpoints; `read_zip` reads it back.
pub fn write_zip(path: &std::path::Path, key: &str, tensors: &[NamedTensor]) -> std::io::Result<()> {
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
    p.extend_from_slice(b"uu.");
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
    }
}
