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

pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
pub const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;

/// Entries larger than this are treated as corruption rather than allocated.
pub const MAX_ENTRY_SIZE: usize = 64 << 20;

/// Pagemap entry flags.
pub const PE_PARENT: u32 = 1;
pub const PE_LAZY: u32 = 2;
pub const PE_PRESENT: u32 = 4;

/// `inventory_entry.img_version` CRIU writes and accepts.
pub const IMG_VERSION: u32 = 2;

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
}

impl Kind {
    /// The file name for this kind; `id` fills the `{}` of per-task or per-object kinds.
    pub fn file_name(self, id: impl std::fmt::Display) -> String {
        self.pattern().replace("{}", &id.to_string())
    }

    /// Which kind a magic pair names, for tools that look at unknown files.
    pub fn from_magic(magic: u32) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.magic() == magic)
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

    /// Raw bytes that follow an entry.
    pub fn read_raw(&mut self, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.input.read_exact(&mut buf).map_err(|e| {
            if e.kind() == ErrorKind::UnexpectedEof {
                self.err(format!("truncated: wanted {len} more bytes"))
            } else {
                self.err(format!("read failed: {e}"))
            }
        })?;
        Ok(buf)
    }
}
