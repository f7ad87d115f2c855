//! The write-ahead file of the Raft log: what makes an append durable with one small write and one `fdatasync`.
//!
//! redb holds the log for reading, committed without durability; this file (`raft.wal`) holds, in order, every
//! append and truncation since redb's last durable commit. A durable redb commit (the vote, a purge, the file
//! growing past [`RESET_BYTES`]) makes the file's records redundant, and it starts empty again. Opening the store
//! replays the records into redb (see `log`).
//!
//! A record is `[body length: u32 LE][CRC-32C of the body: u32 LE][body]`; a body is
//! - `1` (append), the committed log id as `[length: u32 LE][JSON]` (length [`NO_COMMITTED`]: none was saved since
//!   the last record), `[entry count: u32 LE]` and per entry `[index: u64 LE][length: u32 LE][the entry's JSON]`;
//! - `2` (truncate), `[first removed index: u64 LE]`.
//!
//! A crash can leave the last record torn: reading stops at the first record that is short or fails its checksum,
//! and if that record reaches the end of the file (or only zeros follow), the file is cut there. Such a record was
//! never acknowledged, since an append returns only after its record is synced. A damaged record with more records
//! after it is not what a crash leaves: opening fails, rather than drop the acknowledged records behind it.

use std::fs::File;
use std::fs::OpenOptions;
use std::io::Read;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

/// The file starts over (after a durable redb commit) once it is this large.
pub const RESET_BYTES: u64 = 64 << 20;

/// The committed-id length that says no committed id is in the record.
const NO_COMMITTED: u32 = u32::MAX;

const APPEND: u8 = 1;
const TRUNCATE: u8 = 2;

/// One change of the log, as the file records it.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// Entries (index and JSON) written in one call, and the committed log id saved before it (JSON), if any.
    Append {
        committed: Option<Vec<u8>>,
        entries: Vec<(u64, Vec<u8>)>,
    },
    /// Entries from this index on removed.
    Truncate { from: u64 },
}

impl Record {
    fn encode(&self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        match self {
            Record::Append { committed, entries } => {
                body.push(APPEND);
                match committed {
                    Some(json) => {
                        body.extend_from_slice(&len32(json.len())?.to_le_bytes());
                        body.extend_from_slice(json);
                    }
                    None => body.extend_from_slice(&NO_COMMITTED.to_le_bytes()),
                }
                body.extend_from_slice(&len32(entries.len())?.to_le_bytes());
                for (index, json) in entries {
                    body.extend_from_slice(&index.to_le_bytes());
                    body.extend_from_slice(&len32(json.len())?.to_le_bytes());
                    body.extend_from_slice(json);
                }
            }
            Record::Truncate { from } => {
                body.push(TRUNCATE);
                body.extend_from_slice(&from.to_le_bytes());
            }
        }
        let mut record = Vec::with_capacity(8 + body.len());
        record.extend_from_slice(&len32(body.len())?.to_le_bytes());
        record.extend_from_slice(&crc32c(&body).to_le_bytes());
        record.extend_from_slice(&body);
        Ok(record)
    }

    /// The body of one record, or `None` if it is not one this module writes.
    fn decode(body: &[u8]) -> Option<Record> {
        let mut r = Reader(body);
        let record = match r.u8()? {
            APPEND => {
                let committed = match r.u32()? {
                    NO_COMMITTED => None,
                    len => Some(r.bytes(len)?.to_vec()),
                };
                let count = r.u32()?;
                let mut entries = Vec::new();
                for _ in 0..count {
                    let index = r.u64()?;
                    let len = r.u32()?;
                    entries.push((index, r.bytes(len)?.to_vec()));
                }
                Record::Append { committed, entries }
            }
            TRUNCATE => Record::Truncate { from: r.u64()? },
            _ => return None,
        };
        r.0.is_empty().then_some(record)
    }
}

/// Lengths in the file are 32 bits (and `u32::MAX` is taken); a Raft entry is far smaller, as a request is at most
/// a few MiB.
fn len32(len: usize) -> std::io::Result<u32> {
    u32::try_from(len)
        .ok()
        .filter(|&len| len != NO_COMMITTED)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a log record of 4 GiB or more"))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, len: u32) -> Option<&'a [u8]> {
        let len = usize::try_from(len).ok()?;
        if self.0.len() < len {
            return None;
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.bytes(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Option<u64> {
        let b = self.bytes(8)?;
        let mut bytes = [0; 8];
        bytes.copy_from_slice(b);
        Some(u64::from_le_bytes(bytes))
    }
}

/// The records at the start of `data` that are whole and pass their checksum, and how many bytes they take.
pub fn parse(data: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    loop {
        let mut r = Reader(&data[at..]);
        let Some((len, crc)) = r.u32().zip(r.u32()) else { break };
        let Some(body) = r.bytes(len) else { break };
        if crc32c(body) != crc {
            break;
        }
        let Some(record) = Record::decode(body) else { break };
        records.push(record);
        at = data.len() - r.0.len();
    }
    (records, at)
}

/// Whether the bytes from a record that does not read on can be what a crash while appending it leaves: too short
/// for a header, a record that reaches the end of the file, or zeros.
fn is_torn_tail(rest: &[u8]) -> bool {
    let mut r = Reader(rest);
    match r.u32() {
        Some(len) if r.u32().is_some() => {
            usize::try_from(len).is_ok_and(|len| len >= r.0.len()) || rest.iter().all(|&b| b == 0)
        }
        _ => true,
    }
}

/// CRC-32C (Castagnoli), byte by byte from a table.
fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u32;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &byte in data {
        crc = TABLE[((crc ^ u32::from(byte)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The open file.
pub struct Wal {
    path: PathBuf,
    file: File,
    /// The same file, for syncing without holding the `Wal` (see [`Wal::sync_handle`]).
    sync: Arc<File>,
    len: u64,
}

impl Wal {
    /// Opens (creating if needed) the file at `path` and reads its records; a torn or damaged tail is cut off.
    pub fn open(path: &Path) -> std::io::Result<(Wal, Vec<Record>)> {
        let created = !path.exists();
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path)?;
        if created {
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        let (records, valid) = parse(&data);
        if !is_torn_tail(&data[valid..]) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "a damaged record at byte {valid} of {} with more records after it, which a crash does not \
                     leave (restore the data directory from a backup, or rejoin this manager with an empty one)",
                    data.len()
                ),
            ));
        }
        if valid < data.len() {
            tracing::warn!(
                path = %path.display(),
                cut = data.len() - valid,
                "the Raft log's write-ahead file ends in an incomplete record (a crash while writing it); cut off"
            );
            file.set_len(valid as u64)?;
            file.sync_all()?;
        }
        let wal = Wal {
            path: path.to_path_buf(),
            sync: Arc::new(file.try_clone()?),
            file,
            len: valid as u64,
        };
        Ok((wal, records))
    }

    /// Appends `record` and syncs it. A failed write is cut off again, so that a later record is not read as part
    /// of it (and dropped with it) after a restart.
    pub fn write(&mut self, record: &Record) -> std::io::Result<()> {
        self.write_unsynced(record, true)
    }

    /// Appends `record` without syncing it: it is durable once a later sync ([`Self::sync_handle`], or the next
    /// [`Self::write`]) returns. A failed write is cut off again, as in `write`.
    pub fn append(&mut self, record: &Record) -> std::io::Result<()> {
        self.write_unsynced(record, false)
    }

    fn write_unsynced(&mut self, record: &Record, sync: bool) -> std::io::Result<()> {
        let bytes = record.encode()?;
        let written = self
            .file
            .write_all(&bytes)
            .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// The file, to sync with `sync_data` while records go on being written: a sync makes every record written
    /// before it began durable.
    pub fn sync_handle(&self) -> Arc<File> {
        self.sync.clone()
    }

    /// Empties the file: call only once everything it holds is durable elsewhere.
    pub fn reset(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_data()?;
        self.len = 0;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_torn_last_record_is_cut_off_and_a_damaged_one_before_others_refused() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("raft.wal");
        let records: Vec<Record> = (1..=3).map(|from| Record::Truncate { from }).collect();
        let encoded: Vec<Vec<u8>> = records.iter().map(|r| r.encode().unwrap()).collect();
        let whole = encoded.concat();
        let last = whole.len() - encoded[2].len();

        // Torn inside the last record, or zeros after the records: cut off, the rest read.
        for tail in [&whole[..whole.len() - 3], &[whole.as_slice(), &[0; 4096]].concat()[..]] {
            std::fs::write(&path, tail).unwrap();
            let (wal, read) = Wal::open(&path).unwrap();
            assert_eq!(read, records[..read.len()].to_vec());
            assert_eq!(std::fs::metadata(&path).unwrap().len(), wal.len());
        }
        let (_, read) = Wal::open(&path).unwrap();
        assert_eq!(read, records);

        // A flipped byte in the second of three records: refused, and the file left as it is.
        let mut damaged = whole.clone();
        damaged[last - 1] ^= 0xFF;
        std::fs::write(&path, &damaged).unwrap();
        let err = Wal::open(&path).err().expect("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("damaged record at byte"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), damaged);
    }

    #[test]
    fn crc32c_matches_the_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    fn record() -> impl Strategy<Value = Record> {
        prop_oneof![
            (
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
                proptest::collection::vec((any::<u64>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..4),
            )
                .prop_map(|(committed, entries)| Record::Append { committed, entries }),
            any::<u64>().prop_map(|from| Record::Truncate { from }),
        ]
    }

    proptest! {
        #[test]
        fn records_read_back_and_a_torn_tail_is_left_out(
            records in proptest::collection::vec(record(), 0..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let encoded: Vec<Vec<u8>> = records.iter().map(|r| r.encode().unwrap()).collect();
            let data = encoded.concat();
            prop_assert_eq!(parse(&data), (records.clone(), data.len()));
            // Cut anywhere: the records wholly before the cut, and nothing of the one it falls in.
            let cut = cut.index(data.len() + 1);
            let mut whole = 0;
            let mut end = 0;
            for e in &encoded {
                if end + e.len() > cut {
                    break;
                }
                end += e.len();
                whole += 1;
            }
            prop_assert_eq!(parse(&data[..cut]), (records[..whole].to_vec(), end));
        }

        #[test]
        fn a_flipped_byte_ends_the_records_before_its_record(
            records in proptest::collection::vec(record(), 1..6),
            at in any::<prop::sample::Index>(),
            flip in 1u8..,
        ) {
            let encoded: Vec<Vec<u8>> = records.iter().map(|r| r.encode().unwrap()).collect();
            let mut data = encoded.concat();
            let at = at.index(data.len());
            data[at] ^= flip;
            let (read, valid) = parse(&data);
            prop_assert!(valid <= at, "a record with a damaged byte was read");
            prop_assert_eq!(&read[..], &records[..read.len()]);
        }

        #[test]
        fn any_bytes_parse_without_panicking(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let (records, valid) = parse(&data);
            let _ = is_torn_tail(&data[valid..]);
            prop_assert!(valid <= data.len());
            prop_assert!(records.len() <= data.len() / 9);
        }
    }
}
