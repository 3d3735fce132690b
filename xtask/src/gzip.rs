//! Parallel gzip with output that depends only on the input and the level.
//!
//! The input is cut into fixed 1 MiB chunks. Each chunk is deflated on the rayon pool with the
//! previous chunk's last 32 KiB as its dictionary and ends with a sync flush, the last one with
//! the final block; the pieces joined form one deflate stream in one gzip member, as pigz
//! writes it. Written by hand rather than with a parallel-gzip crate because those run their
//! own thread pools and their output can vary with the number of threads.

use anyhow::{Context, Result};
use flate2::{Compress, Compression, FlushCompress, Status};
use rayon::prelude::*;

const CHUNK: usize = 1 << 20;
const WINDOW: usize = 32 * 1024;

/// gzip header: magic, deflate, no flags, no modification time, no extra flags, OS unknown.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// Compresses `data` into one gzip member.
pub fn compress(data: &[u8], level: u32) -> Result<Vec<u8>> {
    let chunks: Vec<&[u8]> = if data.is_empty() { vec![data] } else { data.chunks(CHUNK).collect() };
    let pieces: Vec<Vec<u8>> = (0..chunks.len())
        .into_par_iter()
        .map(|index| {
            let mut compress = Compress::new(Compression::new(level), false);
            if index > 0 {
                let previous = chunks[index - 1];
                let dictionary = &previous[previous.len().saturating_sub(WINDOW)..];
                compress.set_dictionary(dictionary).context("setting a deflate dictionary")?;
            }
            let last = index + 1 == chunks.len();
            let flush = if last { FlushCompress::Finish } else { FlushCompress::Sync };
            deflate(&mut compress, chunks[index], flush)
        })
        .collect::<Result<_>>()?;

    let size: usize = pieces.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(HEADER.len() + size + 8);
    out.extend_from_slice(&HEADER);
    for piece in &pieces {
        out.extend_from_slice(piece);
    }
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    // ISIZE is the input length modulo 2^32.
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    Ok(out)
}

/// Deflates all of `input`, ending with `flush`. Following zlib's contract, a flush is
/// complete once a call consumed all input and left output space unused.
fn deflate(compress: &mut Compress, input: &[u8], flush: FlushCompress) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 2 + 4096);
    loop {
        if out.capacity() - out.len() < 4096 {
            out.reserve(out.capacity());
        }
        let consumed = compress.total_in() as usize;
        let status = compress
            .compress_vec(&input[consumed..], &mut out, flush)
            .context("deflating a layer")?;
        let all_in = compress.total_in() as usize == input.len();
        let finished = match flush {
            FlushCompress::Finish => status == Status::StreamEnd,
            _ => all_in && out.len() < out.capacity(),
        };
        if finished {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(size: usize) -> Vec<u8> {
        // Text-like bytes with repeats across chunk boundaries, so dictionaries matter.
        (0..size).map(|i| b"scratch images for static binaries\n"[(i * 7 + i / 4096) % 35]).collect()
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn round_trips_across_chunks() {
        for size in [0, 1, CHUNK - 1, CHUNK, 3 * CHUNK + 17] {
            let data = sample(size);
            assert_eq!(gunzip(&compress(&data, 4).unwrap()), data, "size {size}");
        }
    }

    #[test]
    fn output_ignores_thread_count() {
        let data = sample(5 * CHUNK + 123);
        let many = compress(&data, 6).unwrap();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let one = pool.install(|| compress(&data, 6).unwrap());
        assert!(many == one, "output differs with one thread");
    }

    #[test]
    fn header_is_fixed() {
        let bytes = compress(b"x", 9).unwrap();
        assert_eq!(&bytes[..10], &HEADER);
    }
}
