//! CRIU's image files, and nothing else in the crate knows their layout.
//!
//! A file is: `IMG_COMMON_MAGIC` (or `IMG_SERVICE_MAGIC` for stats) then the type's magic, then
//! entries, each a native-endian u32 length and that many bytes of protobuf, optionally followed
//! by raw bytes the entry announces (pipe data, socket queues). `inventory.img` has only its own
//! magic; `pages-N.img` is raw page data with no header at all.

use std::fs::File;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use prost::Message;

use crate::error::{Error, Result};

pub mod pages;

pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
pub const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;

/// Entries larger than this are treated as corruption rather than allocated.
pub const MAX_ENTRY_SIZE: usize = 64 << 20;

/// Pagemap entry flags.
pub const PE_PARENT: u32 = 1;
pub const PE_LAZY: u32 = 2;
pub const PE_PRESENT: u32 = 4;
/// criu-rs: the page is the parent task's page at the same address (still shared copy-on-write
/// at checkpoint time); it is stored once, in the parent's image. Images using it say
/// IMG_VERSION_COW in the inventory, which CRIU refuses rather than restoring wrong.
pub const PE_COW: u32 = 8;

/// `inventory_entry.img_version` CRIU writes and accepts.
pub const IMG_VERSION: u32 = 2;
/// `IMG_VERSION` plus criu-rs extensions CRIU cannot restore (PE_COW).
pub const IMG_VERSION_COW: u32 = 3;

macro_rules! kinds {
    ($($kind:ident => ($magic:expr, $service:expr, $fmt:expr)),* $(,)?) => {
        /// The image types we read and write, with their magic and file name pattern
        /// (`{}` is the pid or id the file belongs to).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Kind { $($kind),* }

        impl Kind {
            pub const ALL: &'static [Kind] = &[$(Kind::$kind),*];

            pub fn magic(self) -> u32 {
                match self { $(Kind::$kind => $magic),* }
            }

            /// Stats and the irmap cache carry the service magic instead of the common one.
            pub fn is_service(self) -> bool {
                match self { $(Kind::$kind => $service),* }
            }

            fn pattern(self) -> &'static str {
                match self { $(Kind::$kind => $fmt),* }
            }
        }
    };
}

kinds! {
    Inventory => (0x5831_3116, false, "inventory.img"),
    Pstree => (0x5027_3030, false, "pstree.img"),
    Core => (0x5505_3847, false, "core-{}.img"),
    Ids => (0x5443_2030, false, "ids-{}.img"),
    Mm => (0x5749_2820, false, "mm-{}.img"),
    Pagemap => (0x5608_4025, false, "pagemap-{}.img"),
    ShmemPagemap => (0x5608_4025, false, "pagemap-shmem-{}.img"),
    // Our own: with a page server, the source's record of the pagemap it sent (the pages are
    // on the destination), so the next iteration knows what the destination holds.
    SentPagemap => (0x5608_4025, false, "sent-pagemap-{}.img"),
    Fdinfo => (0x5621_3732, false, "fdinfo-{}.img"),
    Files => (0x5630_3138, false, "files.img"),
    Fs => (0x5140_3912, false, "fs-{}.img"),
    Creds => (0x5402_3547, false, "creds-{}.img"),
    TtyInfo => (0x5945_3036, false, "tty-info.img"),
    TtyFiles => (0x5943_3025, false, "tty.img"),
    TtyData => (0x5941_3026, false, "tty-data.img"),
    Timens => (0x4311_4433, false, "timens-{}.img"),
    Seccomp => (0x6441_3049, false, "seccomp.img"),
    Stats => (0x5709_3306, true, "stats-{}"),
    PipesData => (0x5645_3709, false, "pipes-data.img"),
    FifoData => (0x5933_3054, false, "fifo-data.img"),
    SkQueues => (0x5626_4026, false, "sk-queues.img"),
    UnixSk => (0x5437_3943, false, "unixsk.img"),
    InetSk => (0x5644_3851, false, "inetsk.img"),
    // Named by a hex id: see `Hex`.
    TcpStream => (0x5146_5506, false, "tcp-stream-{}.img"),
    EventfdFile => (0x4452_3722, false, "eventfd.img"),
    EventpollFile => (0x4502_3858, false, "eventpoll.img"),
    EventpollTfd => (0x4443_3746, false, "eventpoll-tfd.img"),
    Signalfd => (0x5732_3820, false, "signalfd.img"),
    Timerfd => (0x5049_3712, false, "timerfd.img"),
    InotifyFile => (0x4842_4431, false, "inotify.img"),
    InotifyWd => (0x5456_2009, false, "inotify-wd.img"),
    FanotifyFile => (0x5509_6122, false, "fanotify.img"),
    FanotifyMark => (0x5650_6035, false, "fanotify-mark.img"),
    // Named by a hex id: see `Hex`.
    GhostFile => (0x5258_3605, false, "ghost-file-{}.img"),
    RemapFpath => (0x5913_3954, false, "remap-fpath.img"),
    FileLocks => (0x5432_3616, false, "filelocks.img"),
    MemfdInode => (0x4845_3499, false, "memfd.img"),
    Pidfd => (0x5443_5556, false, "pidfd.img"),
    Mnts => (0x5556_3928, false, "mountpoints-{}.img"),
    Netns => (0x5593_3752, false, "netns-{}.img"),
    Utsns => (0x5447_3203, false, "utsns-{}.img"),
    Pidns => (0x6115_7326, false, "pidns-{}.img"),
    Userns => (0x5547_4906, false, "userns-{}.img"),
    Cgroup => (0x5938_3330, false, "cgroup.img"),
    NsFiles => (0x6139_4011, false, "ns-files.img"),
    Pipes => (0x5651_3555, false, "pipes.img"),
    Fifo => (0x5836_4939, false, "fifo.img"),
    Tunfile => (0x5714_3751, false, "tunfile.img"),
    BpfmapFile => (0x5750_6142, false, "bpfmap-file.img"),
    BpfmapData => (0x6432_4033, false, "bpfmap-data.img"),
    Cpuinfo => (0x6140_4013, false, "cpuinfo.img"),
    IrmapCache => (0x5700_4059, true, "irmap-cache"),
    // Layouts older CRIUs wrote; newer ones fold them into files.img, core and mm. Restore
    // still reads them.
    RegFiles => (0x5036_3636, false, "reg-files.img"),
    ExtFiles => (0x5925_5641, false, "ext-files.img"),
    PacketSk => (0x6045_4618, false, "packetsk.img"),
    NetlinkSk => (0x5800_5614, false, "netlinksk.img"),
    Vmas => (0x5412_3737, false, "vmas-{}.img"),
    Sigacts => (0x5534_4201, false, "sigacts-{}.img"),
    Itimers => (0x5746_4056, false, "itimers-{}.img"),
    PosixTimers => (0x5260_3957, false, "posix-timers-{}.img"),
    Rlimit => (0x5711_3925, false, "rlimit-{}.img"),
    SignalShared => (0x5925_5647, false, "signal-s-{}.img"),
    SignalPrivate => (0x5925_5647, false, "signal-p-{}.img"),
}

impl Kind {
    /// The file name for this kind; `id` fills the `{}` of per-task or per-object kinds.
    pub fn file_name(self, id: impl std::fmt::Display) -> String {
        self.pattern().replace("{}", &id.to_string())
    }

    /// Which kind a magic pair names, for tools that look at unknown files. Kinds sharing a
    /// magic (the pagemaps, the two signal queues) give the first of them.
    pub fn from_magic(magic: u32) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.magic() == magic)
    }
}

/// An id CRIU prints in hex in file names: `ghost-file-{:x}`, `tcp-stream-{:x}` (the socket's
/// inode). Use `dir.create(Kind::GhostFile, Hex(id))`; a plain number would give a name CRIU
/// does not look for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hex<T>(pub T);

impl<T: std::fmt::LowerHex> std::fmt::Display for Hex<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// The name of a raw page-data file.
pub fn pages_file_name(pages_id: u32) -> String {
    format!("pages-{pages_id}.img")
}

/// A directory of images.
#[derive(Clone, Debug)]
pub struct ImageDir {
    path: PathBuf,
}

impl ImageDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ImageDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn exists(&self, kind: Kind, id: impl std::fmt::Display) -> bool {
        self.file(&kind.file_name(id)).exists()
    }

    pub fn create(&self, kind: Kind, id: impl std::fmt::Display) -> Result<ImageWriter> {
        ImageWriter::create(self.file(&kind.file_name(id)), kind)
    }

    pub fn open(&self, kind: Kind, id: impl std::fmt::Display) -> Result<ImageReader> {
        ImageReader::open(self.file(&kind.file_name(id)), kind)
    }

    /// Opens an image that may legitimately be absent (CRIU omits empty ones).
    pub fn open_optional(
        &self,
        kind: Kind,
        id: impl std::fmt::Display,
    ) -> Result<Option<ImageReader>> {
        let path = self.file(&kind.file_name(id));
        match File::open(&path) {
            Ok(f) => ImageReader::from_file(f, path, kind).map(Some),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::image(path, format!("cannot open: {e}"))),
        }
    }

    /// Writes a whole image of one entry.
    pub fn write_one<M: Message>(
        &self,
        kind: Kind,
        id: impl std::fmt::Display,
        entry: &M,
    ) -> Result<()> {
        let mut w = self.create(kind, id)?;
        w.write(entry)?;
        w.finish()
    }

    /// Writes a whole image of several entries.
    pub fn write_all<'a, M: Message + 'a>(
        &self,
        kind: Kind,
        id: impl std::fmt::Display,
        entries: impl IntoIterator<Item = &'a M>,
    ) -> Result<()> {
        let mut w = self.create(kind, id)?;
        for e in entries {
            w.write(e)?;
        }
        w.finish()
    }

    /// Reads an image that must hold exactly one entry.
    pub fn read_one<M: Message + Default>(
        &self,
        kind: Kind,
        id: impl std::fmt::Display,
    ) -> Result<M> {
        let mut r = self.open(kind, id)?;
        let entry = r
            .read_entry()?
            .ok_or_else(|| Error::image(r.path.clone(), "no entry in image"))?;
        Ok(entry)
    }

    /// Reads every entry of an image.
    pub fn read_all<M: Message + Default>(
        &self,
        kind: Kind,
        id: impl std::fmt::Display,
    ) -> Result<Vec<M>> {
        let mut r = self.open(kind, id)?;
        r.collect_all()
    }

    /// Like `read_all`, but an absent image reads as empty.
    pub fn read_all_optional<M: Message + Default>(
        &self,
        kind: Kind,
        id: impl std::fmt::Display,
    ) -> Result<Vec<M>> {
        match self.open_optional(kind, id)? {
            Some(mut r) => r.collect_all(),
            None => Ok(Vec::new()),
        }
    }
}

/// Writes the header, then length-prefixed entries.
pub struct ImageWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl ImageWriter {
    pub fn create(path: PathBuf, kind: Kind) -> Result<Self> {
        let file =
            File::create(&path).map_err(|e| Error::image(&path, format!("cannot create: {e}")))?;
        let mut w = ImageWriter {
            out: BufWriter::with_capacity(64 << 10, file),
            path,
        };
        if kind != Kind::Inventory {
            let first = if kind.is_service() {
                IMG_SERVICE_MAGIC
            } else {
                IMG_COMMON_MAGIC
            };
            w.write_raw(&first.to_ne_bytes())?;
        }
        w.write_raw(&kind.magic().to_ne_bytes())?;
        Ok(w)
    }

    pub fn write<M: Message>(&mut self, entry: &M) -> Result<()> {
        let len = entry.encoded_len();
        let mut buf = Vec::with_capacity(4 + len);
        buf.extend_from_slice(&(len as u32).to_ne_bytes());
        entry
            .encode(&mut buf)
            .map_err(|e| Error::image(&self.path, format!("cannot encode entry: {e}")))?;
        self.write_raw(&buf)
    }

    /// Raw bytes that follow an entry (pipe buffers, socket queues).
    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| Error::image(&self.path, format!("write failed: {e}")))
    }

    pub fn finish(mut self) -> Result<()> {
        self.out
            .flush()
            .map_err(|e| Error::image(&self.path, format!("write failed: {e}")))
    }
}

/// Checks the header, then yields decoded entries.
pub struct ImageReader {
    input: BufReader<File>,
    path: PathBuf,
}

impl ImageReader {
    pub fn open(path: PathBuf, kind: Kind) -> Result<Self> {
        let file =
            File::open(&path).map_err(|e| Error::image(&path, format!("cannot open: {e}")))?;
        Self::from_file(file, path, kind)
    }

    fn from_file(file: File, path: PathBuf, kind: Kind) -> Result<Self> {
        let mut r = ImageReader {
            input: BufReader::with_capacity(64 << 10, file),
            path,
        };
        let mut first = r.read_u32()?.ok_or_else(|| r.err("empty file, no magic"))?;
        if kind != Kind::Inventory {
            let want = if kind.is_service() {
                IMG_SERVICE_MAGIC
            } else {
                IMG_COMMON_MAGIC
            };
            if first != want {
                return Err(r.err(format!("bad magic {first:#x}, expected {want:#x}")));
            }
            first = r.read_u32()?.ok_or_else(|| r.err("truncated header"))?;
        }
        if first != kind.magic() {
            return Err(r.err(format!(
                "bad magic {first:#x}, expected {:#x} ({kind:?})",
                kind.magic()
            )));
        }
        Ok(r)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        Error::image(&self.path, msg)
    }

    /// A u32, or None at a clean end of file.
    fn read_u32(&mut self) -> Result<Option<u32>> {
        let mut b = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.input.read(&mut b[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(self.err("truncated entry length")),
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err(format!("read failed: {e}"))),
            }
        }
        Ok(Some(u32::from_ne_bytes(b)))
    }

    /// The next entry, or None at the end of the image.
    pub fn read_entry<M: Message + Default>(&mut self) -> Result<Option<M>> {
        let Some(len) = self.read_u32()? else {
            return Ok(None);
        };
        let len = len as usize;
        if len > MAX_ENTRY_SIZE {
            return Err(self.err(format!(
                "entry of {len} bytes is over the {MAX_ENTRY_SIZE} limit"
            )));
        }
        let buf = self.read_raw(len)?;
        M::decode(buf.as_slice())
            .map(Some)
            .map_err(|e| self.err(format!("undecodable entry: {e}")))
    }

    pub fn collect_all<M: Message + Default>(&mut self) -> Result<Vec<M>> {
        let mut v = Vec::new();
        while let Some(e) = self.read_entry()? {
            v.push(e);
        }
        Ok(v)
    }

    /// Raw bytes that follow an entry. Memory grows with what the file really holds, so a
    /// corrupt length in a short file is an error, not a huge allocation.
    pub fn read_raw(&mut self, len: usize) -> Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(len.min(1 << 20));
        (&mut self.input)
            .take(len as u64)
            .read_to_end(&mut buf)
            .map_err(|e| self.err(format!("read failed: {e}")))?;
        if buf.len() < len {
            return Err(self.err(format!("truncated: wanted {len} more bytes")));
        }
        Ok(buf)
    }

    /// Up to `max` raw bytes: fewer only at the end of the file (empty there). For contents
    /// that run to the end of the image (a ghost file kept whole).
    pub fn read_raw_upto(&mut self, max: usize) -> Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(max.min(1 << 20));
        (&mut self.input)
            .take(max as u64)
            .read_to_end(&mut buf)
            .map_err(|e| self.err(format!("read failed: {e}")))?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    /// Writes `bytes` as the `kind` image of id 1 and tries to read all its entries.
    fn read_back(kind: Kind, bytes: &[u8]) -> (PathBuf, Result<Vec<pb::PstreeEntry>>) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ImageDir::new(tmp.path());
        let path = dir.file(&kind.file_name(1));
        std::fs::write(&path, bytes).unwrap();
        (path, dir.read_all(kind, 1))
    }

    fn header(first: u32, second: u32) -> Vec<u8> {
        [first.to_ne_bytes(), second.to_ne_bytes()].concat()
    }

    /// The error must be Error::Image, name the file, and say `what`.
    fn assert_image_err(path: &Path, res: Result<Vec<pb::PstreeEntry>>, what: &str) {
        match res {
            Err(Error::Image { file, msg }) => {
                assert_eq!(file, path);
                assert!(msg.contains(what), "message {msg:?} lacks {what:?}");
                let shown = Error::image(file, msg).to_string();
                assert!(shown.contains(&path.display().to_string()), "{shown}");
            }
            other => panic!("expected Error::Image about {what:?}, got {other:?}"),
        }
    }

    fn pstree_magic() -> u32 {
        Kind::Pstree.magic()
    }

    #[test]
    fn round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ImageDir::new(tmp.path());
        let e = pb::PstreeEntry {
            pid: 7,
            ppid: 1,
            pgid: 7,
            sid: 7,
            threads: vec![7, 8],
        };
        dir.write_all(Kind::Pstree, 0, [&e, &e]).unwrap();
        let back: Vec<pb::PstreeEntry> = dir.read_all(Kind::Pstree, 0).unwrap();
        assert_eq!(back, vec![e.clone(), e]);
        let raw = std::fs::read(dir.file("pstree.img")).unwrap();
        assert_eq!(raw[..8], header(IMG_COMMON_MAGIC, pstree_magic())[..]);
    }

    #[test]
    fn headers_by_kind() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ImageDir::new(tmp.path());
        let inv = pb::InventoryEntry {
            img_version: IMG_VERSION,
            ..Default::default()
        };
        dir.write_one(Kind::Inventory, 0, &inv).unwrap();
        dir.write_one(Kind::Stats, "dump", &pb::StatsEntry::default())
            .unwrap();
        let raw = std::fs::read(dir.file("inventory.img")).unwrap();
        assert_eq!(raw[..4], Kind::Inventory.magic().to_ne_bytes());
        let raw = std::fs::read(dir.file("stats-dump")).unwrap();
        assert_eq!(raw[..8], header(IMG_SERVICE_MAGIC, Kind::Stats.magic())[..]);
        let back: pb::InventoryEntry = dir.read_one(Kind::Inventory, 0).unwrap();
        assert_eq!(back, inv);
        assert!(dir.open_optional(Kind::Mm, 5).unwrap().is_none());
    }

    #[test]
    fn hex_named_kinds() {
        assert_eq!(Kind::GhostFile.file_name(Hex(0x2au32)), "ghost-file-2a.img");
        assert_eq!(
            Kind::TcpStream.file_name(Hex(4026532000u64)),
            "tcp-stream-f00000a0.img"
        );
    }

    #[test]
    fn empty_file() {
        let (path, res) = read_back(Kind::Pstree, &[]);
        assert_image_err(&path, res, "empty file");
    }

    #[test]
    fn wrong_first_magic() {
        let (path, res) = read_back(Kind::Pstree, &header(0x1234_5678, pstree_magic()));
        assert_image_err(&path, res, "bad magic 0x12345678");
        // A service magic on a common image is wrong too.
        let (path, res) = read_back(Kind::Pstree, &header(IMG_SERVICE_MAGIC, pstree_magic()));
        assert_image_err(&path, res, "bad magic");
    }

    #[test]
    fn wrong_type_magic() {
        let (path, res) = read_back(Kind::Pstree, &header(IMG_COMMON_MAGIC, Kind::Core.magic()));
        assert_image_err(&path, res, "expected 0x50273030 (Pstree)");
    }

    #[test]
    fn truncated_header() {
        let (path, res) = read_back(Kind::Pstree, &IMG_COMMON_MAGIC.to_ne_bytes());
        assert_image_err(&path, res, "truncated header");
    }

    #[test]
    fn truncated_length() {
        let mut b = header(IMG_COMMON_MAGIC, pstree_magic());
        b.extend_from_slice(&[5, 0]);
        let (path, res) = read_back(Kind::Pstree, &b);
        assert_image_err(&path, res, "truncated entry length");
    }

    #[test]
    fn truncated_entry() {
        let mut b = header(IMG_COMMON_MAGIC, pstree_magic());
        b.extend_from_slice(&10u32.to_ne_bytes());
        b.extend_from_slice(&[8, 1, 16]);
        let (path, res) = read_back(Kind::Pstree, &b);
        assert_image_err(&path, res, "truncated: wanted 10 more bytes");
    }

    #[test]
    fn entry_over_limit() {
        let mut b = header(IMG_COMMON_MAGIC, pstree_magic());
        b.extend_from_slice(&(MAX_ENTRY_SIZE as u32 + 1).to_ne_bytes());
        let (path, res) = read_back(Kind::Pstree, &b);
        assert_image_err(&path, res, "over the");
    }

    #[test]
    fn undecodable_entry() {
        let mut b = header(IMG_COMMON_MAGIC, pstree_magic());
        // Field 1 with wire type 7, which does not exist.
        b.extend_from_slice(&2u32.to_ne_bytes());
        b.extend_from_slice(&[0x0f, 0x00]);
        let (path, res) = read_back(Kind::Pstree, &b);
        assert_image_err(&path, res, "undecodable entry");
    }

    #[test]
    fn read_one_of_empty_image() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ImageDir::new(tmp.path());
        dir.create(Kind::Mm, 3).unwrap().finish().unwrap();
        match dir.read_one::<pb::MmEntry>(Kind::Mm, 3) {
            Err(Error::Image { file, msg }) => {
                assert_eq!(file, dir.file("mm-3.img"));
                assert!(msg.contains("no entry"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn kinds_are_consistent() {
        let mut names = std::collections::HashSet::new();
        for k in Kind::ALL {
            assert!(names.insert(k.file_name("X")), "{k:?}: duplicate file name");
            assert_ne!(k.magic(), IMG_COMMON_MAGIC);
            assert_ne!(k.magic(), IMG_SERVICE_MAGIC);
            let m = Kind::from_magic(k.magic()).unwrap();
            assert_eq!(m.magic(), k.magic());
        }
        assert!(Kind::Stats.is_service() && Kind::IrmapCache.is_service());
        assert_eq!(Kind::ALL.iter().filter(|k| k.is_service()).count(), 2);
    }
}
