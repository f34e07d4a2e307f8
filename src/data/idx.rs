//! The IDX format of (Fashion-)MNIST: a 4-byte magic (two zero bytes, the element type, the
//! number of dimensions), each dimension as a big-endian u32, then the elements in row-major
//! order. Only unsigned bytes (type 0x08) are read, which is what the image and label files
//! hold. A gzip file (magic 1f 8b, as the data sets ship) is inflated on the way in.
//!
//! # Shapes
//! images `[N, rows, cols]` u8; labels `[N]` u8.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// One IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an IDX file, gzipped or not.
pub fn read(path: &Path) -> Result<Idx> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::Parse { path: path.to_path_buf(), message: format!("not a whole gzip stream: {e}") })?;
        out
    } else {
        raw
    };
    parse(&bytes).map_err(|message| Error::Parse { path: path.to_path_buf(), message })
}

/// Parses IDX bytes; the error says what was expected.
pub fn parse(bytes: &[u8]) -> std::result::Result<Idx, String> {
    let [0, 0, kind, ndim] = *bytes.get(..4).ok_or("shorter than the 4-byte IDX magic")? else {
        return Err(format!("magic {:02x?} is not IDX's (two zero bytes first)", &bytes[..4]));
    };
    if kind != 0x08 {
        return Err(format!("element type 0x{kind:02x}; only unsigned bytes (0x08) are read"));
    }
    let ndim = ndim as usize;
    let header = 4 + 4 * ndim;
    let dims: Vec<usize> = bytes
        .get(4..header)
        .ok_or(format!("ends inside the header of {ndim} dimensions"))?
        .chunks(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("dimensions overflow")?;
    let data = &bytes[header..];
    if data.len() != n {
        return Err(format!("dimensions {dims:?} need {n} bytes of data, the file has {}", data.len()));
    }
    Ok(Idx { dims, data: data.to_vec() })
}

/// The bytes of an IDX array of unsigned bytes (for tests and fixtures).
pub fn to_bytes(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend((d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn reads_plain_and_gzip_and_names_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8 * 7).collect();
        let bytes = to_bytes(&[2, 3, 4], &data);
        let plain = dir.path().join("x-idx3-ubyte");
        std::fs::write(&plain, &bytes).unwrap();
        let gz = dir.path().join("x-idx3-ubyte.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&bytes).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        for p in [&plain, &gz] {
            let idx = read(p).unwrap();
            assert_eq!((idx.dims.as_slice(), idx.data.as_slice()), (&[2, 3, 4][..], &data[..]));
        }
        let cases: [(&[u8], &str); 4] = [
            (&bytes[..bytes.len() - 1], "need 24 bytes"),
            (&[0, 0, 0x0d, 1, 0, 0, 0, 1, 0], "element type 0x0d"),
            (&[1, 2, 3, 4], "magic"),
            (&[0, 0, 8, 2, 0, 0], "header"),
        ];
        for (b, what) in cases {
            std::fs::write(&plain, b).unwrap();
            let e = read(&plain).unwrap_err().to_string();
            assert!(e.contains("x-idx3-ubyte") && e.contains(what), "{e}");
        }
        std::fs::write(&gz, [0x1f, 0x8b, 8, 0]).unwrap();
        let e = read(&gz).unwrap_err().to_string();
        assert!(e.contains("gzip"), "{e}");
    }
}
