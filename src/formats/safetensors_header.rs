//! A safetensors file the `safetensors` crate refused, read again to say which tensor is wrong
//! and by how much: the crate's messages ("invalid JSON in header", "incomplete metadata")
//! name neither the tensor nor its dtype, offsets or the file's size. Also the tensor names of a
//! file from its header alone ([`tensor_names`]), for deciding what a file holds without reading
//! its weights.

use serde_json::Value;

/// The dtypes the safetensors format defines (its spec), with their sizes in bits.
const DTYPES: &[(&str, usize)] = &[
    ("BOOL", 8),
    ("F4", 4),
    ("F6_E2M3", 6),
    ("F6_E3M2", 6),
    ("U8", 8),
    ("I8", 8),
    ("F8_E5M2", 8),
    ("F8_E4M3", 8),
    ("F8_E8M0", 8),
    ("I16", 16),
    ("U16", 16),
    ("F16", 16),
    ("BF16", 16),
    ("I32", 32),
    ("U32", 32),
    ("F32", 32),
    ("C64", 64),
    ("F64", 64),
    ("I64", 64),
    ("U64", 64),
];

/// The tensor names of a safetensors file read from its header alone: the first 8 bytes are the
/// header's length (little-endian), then the header is JSON keyed by tensor name. None when the
/// file is not one.
pub fn tensor_names(file: &std::path::Path) -> Option<Vec<String>> {
    use std::io::Read;
    let mut f = std::fs::File::open(file).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    // The format caps the header at 100 MB; a larger length is not a safetensors file.
    if len > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).ok()?;
    let v: serde_json::Map<String, Value> = serde_json::from_slice(&header).ok()?;
    Some(v.into_iter().map(|(k, _)| k).filter(|k| k != "__metadata__").collect())
}

/// Why `bytes` is not a valid safetensors file, naming the tensor, its dtype or offsets and
/// the sizes where the header shows it; `crate_says` (the crate's message) when no finer cause
/// is found.
pub fn diagnose(bytes: &[u8], crate_says: &str) -> String {
    let size = bytes.len();
    let Some(head) = bytes.get(..8) else {
        return format!("the file is {size} bytes, too short for the 8-byte header length");
    };
    let n = u64::from_le_bytes(head.try_into().expect("8 bytes"));
    if n > (size - 8) as u64 {
        return format!("the header length says {n} bytes, but the file is {size} bytes");
    }
    let (n, data_len) = (n as usize, (size - 8 - n as usize) as u64);
    let header: Value = match serde_json::from_slice(&bytes[8..8 + n]) {
        Ok(h) => h,
        Err(e) => return format!("invalid JSON in the {n}-byte header: {e}"),
    };
    let Some(entries) = header.as_object() else {
        return format!("the header is `{header}`, not a JSON object of tensors");
    };
    for (name, entry) in entries.iter().filter(|(k, _)| k.as_str() != "__metadata__") {
        let dtype = entry["dtype"].as_str().unwrap_or("(none)");
        let Some(&(_, bits)) = DTYPES.iter().find(|(d, _)| *d == dtype) else {
            let known: Vec<&str> = DTYPES.iter().map(|(d, _)| *d).collect();
            return format!(
                "tensor `{name}` has dtype `{dtype}`, which safetensors does not define ({})",
                known.join(", ")
            );
        };
        let offsets: Option<Vec<u64>> =
            entry["data_offsets"].as_array().map(|a| a.iter().filter_map(Value::as_u64).collect());
        let Some([start, end]) = offsets.as_deref().and_then(|o| <[u64; 2]>::try_from(o).ok()) else {
            return format!("tensor `{name}` has data_offsets {}; expected [start, end]", entry["data_offsets"]);
        };
        if start > end || end > data_len {
            return format!(
                "tensor `{name}` ({dtype}) has data_offsets [{start}, {end}], past the end of the data: \
                 the file is {size} bytes, {data_len} of them after the {n}-byte header"
            );
        }
        let shape: Option<Vec<u64>> = entry["shape"].as_array().map(|a| a.iter().filter_map(Value::as_u64).collect());
        if let Some(shape) = shape {
            let want = shape.iter().try_fold(bits as u64, |acc, &d| acc.checked_mul(d)).map(|b| b.div_ceil(8));
            if want != Some(end - start) {
                return format!(
                    "tensor `{name}` ({dtype}, shape {shape:?}) needs {} bytes, but its data_offsets \
                     [{start}, {end}] hold {}",
                    want.map_or("more than 2^64".to_string(), |w| w.to_string()),
                    end - start
                );
            }
        }
    }
    format!("{crate_says} (the file is {size} bytes, the header {n})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend(std::iter::repeat_n(0u8, data));
        b
    }

    #[test]
    fn names_from_the_header_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let header =
            r#"{"__metadata__":{"format":"pt"},"conv1.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        std::fs::write(&path, file(header, 4)).unwrap();
        assert_eq!(tensor_names(&path), Some(vec!["conv1.weight".to_string()]));
        // Truncated weights do not matter: only the header is read.
        std::fs::write(&path, file(header, 0)).unwrap();
        assert_eq!(tensor_names(&path), Some(vec!["conv1.weight".to_string()]));
        std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\x7fjunk").unwrap();
        assert_eq!(tensor_names(&path), None);
        assert_eq!(tensor_names(&dir.path().join("missing")), None);
    }

    #[test]
    fn names_the_tensor_its_dtype_offsets_and_the_sizes() {
        let unknown = file(r#"{"w": {"dtype": "F12", "shape": [2], "data_offsets": [0, 8]}}"#, 8);
        let m = diagnose(&unknown, "crate");
        assert!(m.contains("tensor `w`") && m.contains("`F12`"), "{m}");
        let past = file(r#"{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}"#, 8);
        let m = diagnose(&past, "crate");
        assert!(
            m.contains("tensor `w` (F32)") && m.contains("[0, 16]") && m.contains(&format!("{} bytes", past.len())),
            "{m}"
        );
        let short = file(r#"{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}"#, 8);
        assert!(diagnose(&short, "crate").contains("needs 12 bytes"), "{}", diagnose(&short, "crate"));
        assert!(diagnose(&[1, 2], "crate").contains("2 bytes"));
        let long = file("{}", 0);
        let mut claims = long.clone();
        claims[..8].copy_from_slice(&1000u64.to_le_bytes());
        assert!(diagnose(&claims, "crate").contains("says 1000 bytes"));
    }
}
