//! Page data across a chain of image directories. Each pre-dump iteration writes only the pages
//! changed since the previous one and marks the rest PE_PARENT; a `parent` symlink leads from a
//! directory to the previous iteration's. Readers see one flat pagemap whose data offsets run
//! across the files of the whole chain.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::{pages_file_name, ImageDir, Kind, PE_COW, PE_PARENT, PE_PRESENT};
use crate::error::{Error, Result};
use crate::pb;

const PAGE_SIZE: u64 = 4096;

/// Name of the link from an images directory to its parent iteration.
pub const PARENT_LINK: &str = "parent";

/// A pagemap entry's flags: old images say `in_parent` instead.
pub fn entry_flags(pe: &pb::PagemapEntry) -> u32 {
    pe.flags.unwrap_or(if pe.in_parent == Some(true) {
        PE_PARENT
    } else {
        PE_PRESENT
    })
}

pub fn entry_pages(pe: &pb::PagemapEntry) -> u64 {
    pe.nr_pages.unwrap_or(pe.compat_nr_pages as u64)
}

impl ImageDir {
    /// The previous iteration's directory, when this one has a `parent` link to an existing one.
    pub fn parent(&self) -> Option<ImageDir> {
        let link = self.file(PARENT_LINK);
        std::fs::symlink_metadata(&link).ok()?;
        let target = std::fs::read_link(&link).ok()?;
        let path = if target.is_absolute() {
            target
        } else {
            self.path().join(target)
        };
        path.is_dir().then(|| ImageDir::new(path))
    }
}

/// One pagemap entry, checked: [start, end), its flags, and where its data is in the pages file.
#[derive(Clone, Copy, Debug)]
struct Run {
    start: u64,
    end: u64,
    flags: u32,
    off: u64,
}

/// One directory's pagemap of one task, with its pages file.
struct Layer {
    dir: ImageDir,
    runs: Vec<Run>,
    pages: File,
    pages_path: PathBuf,
}

impl Layer {
    fn open(dir: &ImageDir, kind: Kind, id: u64) -> Result<Option<Layer>> {
        let Some(mut r) = dir.open_optional(kind, id)? else {
            return Ok(None);
        };
        let head: pb::PagemapHead = r
            .read_entry()?
            .ok_or_else(|| Error::image(r.path().to_owned(), "no pagemap head"))?;
        let entries: Vec<pb::PagemapEntry> = r.collect_all()?;
        let path = r.path().to_owned();
        let runs = check_entries(&entries).map_err(|m| Error::image(&path, m))?;
        let pages_path = dir.file(&pages_file_name(head.pages_id));
        let pages = File::open(&pages_path)
            .map_err(|e| Error::image(&pages_path, format!("cannot open: {e}")))?;
        let want: u64 = runs
            .iter()
            .filter(|r| r.flags & PE_PRESENT != 0)
            .map(|r| r.end - r.start)
            .sum();
        let have = pages
            .metadata()
            .map_err(|e| Error::io("stat pages image", e))?
            .len();
        if have < want {
            return Err(Error::image(
                &pages_path,
                format!("truncated: {have} bytes, the pagemap needs {want}"),
            ));
        }
        Ok(Some(Layer {
            dir: dir.clone(),
            runs,
            pages,
            pages_path,
        }))
    }
}

/// Checks a pagemap (page-aligned, no overflow, in address order without overlaps) and gives
/// each entry with data its offset in the pages file.
fn check_entries(entries: &[pb::PagemapEntry]) -> std::result::Result<Vec<Run>, String> {
    let mut runs = Vec::with_capacity(entries.len());
    let mut off = 0u64;
    let mut last_end = 0u64;
    for pe in entries {
        let nr = entry_pages(pe);
        let len = nr
            .checked_mul(PAGE_SIZE)
            .filter(|_| nr > 0)
            .ok_or_else(|| format!("entry at {:#x} has {nr} pages", pe.vaddr))?;
        let end = pe
            .vaddr
            .checked_add(len)
            .ok_or_else(|| format!("entry at {:#x} runs past the address space", pe.vaddr))?;
        if pe.vaddr % PAGE_SIZE != 0 || pe.vaddr < last_end {
            return Err(format!(
                "entry at {:#x} is unaligned or out of order",
                pe.vaddr
            ));
        }
        let flags = entry_flags(pe);
        runs.push(Run {
            start: pe.vaddr,
            end,
            flags,
            off,
        });
        if flags & PE_PRESENT != 0 {
            off += len;
        }
        last_end = end;
    }
    Ok(runs)
}

/// Where the data of an address range lives: (start, end, layer, offset in its pages file).
type Located = (u64, u64, usize, u64);

/// The layers of one task's pages, this directory's first, parents opened when first needed.
struct Chain {
    kind: Kind,
    id: u64,
    layers: Vec<Layer>,
    /// No layer beyond the last one loaded.
    ended: bool,
}

impl Chain {
    fn open(dir: &ImageDir, kind: Kind, id: u64) -> Result<Option<Chain>> {
        Ok(Layer::open(dir, kind, id)?.map(|l| Chain {
            kind,
            id,
            layers: vec![l],
            ended: false,
        }))
    }

    /// Layer `i`, loading parents as needed; None past the end of the chain.
    fn layer(&mut self, i: usize) -> Result<Option<&Layer>> {
        while self.layers.len() <= i && !self.ended {
            let last = self.layers.last().expect("at least one layer");
            let next = match last.dir.parent() {
                Some(p) => Layer::open(&p, self.kind, self.id)?,
                None => None,
            };
            match next {
                Some(l) => self.layers.push(l),
                None => self.ended = true,
            }
        }
        Ok(self.layers.get(i))
    }

    /// Finds the data of [start, end) from layer `i` down. With `strict`, every page must be
    /// found (a gap is a broken chain); without, pages nobody holds are left out.
    fn locate(&mut self, i: usize, start: u64, end: u64, strict: bool) -> Result<Vec<Located>> {
        let mut out = Vec::new();
        let missing = |dir: &ImageDir, a: u64| {
            Error::image(
                dir.path(),
                format!("page {a:#x} is marked as in the parent images, which do not have it"),
            )
        };
        let Some(layer) = self.layer(i)? else {
            if strict {
                let child = &self.layers[i - 1].dir;
                return Err(Error::image(
                    child.path(),
                    format!("pages {start:#x}-{end:#x} are marked as in the parent images, but there are none"),
                ));
            }
            return Ok(out);
        };
        let dir = layer.dir.clone();
        // Runs overlapping [start, end), in order.
        let first = layer.runs.partition_point(|r| r.end <= start);
        let runs: Vec<Run> = layer.runs[first..]
            .iter()
            .take_while(|r| r.start < end)
            .copied()
            .collect();
        let mut at = start;
        for r in runs {
            let (s, e) = (r.start.max(at), r.end.min(end));
            if s > at && strict {
                return Err(missing(&dir, at));
            }
            if r.flags & PE_PRESENT != 0 {
                out.push((s, e, i, r.off + (s - r.start)));
            } else if r.flags & PE_PARENT != 0 {
                let below = self.locate(i + 1, s, e, strict)?;
                out.extend(below);
            } else if strict {
                return Err(missing(&dir, s));
            }
            at = e;
        }
        if at < end && strict {
            return Err(missing(&dir, at));
        }
        Ok(out)
    }
}

/// A task's pages as restore reads them: a flat pagemap (PE_PRESENT and PE_COW entries only),
/// whose data, in entry order, is spread over the pages files of the chain.
pub struct PageFile {
    files: Vec<File>,
    /// (offset in the flat data, length, file, offset in that file), in flat order.
    extents: Vec<(u64, u64, usize, u64)>,
}

impl PageFile {
    /// Reads `buf.len()` bytes of the flat data at `off`.
    pub fn read_exact_at(&self, buf: &mut [u8], off: u64) -> Result<()> {
        let mut done = 0usize;
        for (fd_file, foff, len) in self.pieces(off, buf.len() as u64)? {
            let f = &self.files[fd_file];
            f.read_exact_at(&mut buf[done..done + len as usize], foff)
                .map_err(|e| Error::io("read pages image", e))?;
            done += len as usize;
        }
        Ok(())
    }

    /// The file pieces (file, offset, length) that hold [off, off + len) of the flat data.
    fn pieces(&self, off: u64, len: u64) -> Result<Vec<(usize, u64, u64)>> {
        let mut out = Vec::new();
        let end = off + len;
        let mut i = self.extents.partition_point(|e| e.0 + e.1 <= off);
        let mut at = off;
        while at < end {
            let Some(&(voff, elen, file, foff)) = self.extents.get(i) else {
                return Err(Error::InvalidOptions(format!(
                    "page data offset {at:#x} is past the images"
                )));
            };
            let n = (voff + elen).min(end) - at;
            out.push((file, foff + (at - voff), n));
            at += n;
            i += 1;
        }
        Ok(out)
    }

    /// Like `pieces`, with the files borrowed: for reading straight into memory.
    pub fn file_pieces(&self, off: u64, len: u64) -> Result<Vec<(BorrowedFd<'_>, u64, u64)>> {
        Ok(self
            .pieces(off, len)?
            .into_iter()
            .map(|(f, o, n)| (self.files[f].as_fd(), o, n))
            .collect())
    }
}

/// A task's (or shared memory object's) pagemap with every PE_PARENT range resolved through the
/// chain of parent directories. None when the image does not exist.
pub fn open_pages(
    dir: &ImageDir,
    kind: Kind,
    id: u64,
) -> Result<Option<(Vec<pb::PagemapEntry>, PageFile)>> {
    let Some(mut chain) = Chain::open(dir, kind, id)? else {
        return Ok(None);
    };
    let top = chain.layers[0].runs.clone();
    let mut flat: Vec<pb::PagemapEntry> = Vec::with_capacity(top.len());
    let mut extents: Vec<(u64, u64, usize, u64)> = Vec::new();
    let mut voff = 0u64;
    let push = |flat: &mut Vec<pb::PagemapEntry>, start: u64, end: u64, flags: u32| {
        let nr = (end - start) / PAGE_SIZE;
        match flat.last_mut() {
            Some(l)
                if flags == PE_PRESENT
                    && l.flags == Some(PE_PRESENT)
                    && l.vaddr + entry_pages(l) * PAGE_SIZE == start =>
            {
                let n = entry_pages(l) + nr;
                l.nr_pages = Some(n);
                l.compat_nr_pages = u32::try_from(n).unwrap_or(0);
            }
            _ => flat.push(pb::PagemapEntry {
                vaddr: start,
                compat_nr_pages: u32::try_from(nr).unwrap_or(0),
                in_parent: None,
                flags: Some(flags),
                nr_pages: Some(nr),
            }),
        }
    };
    for r in top {
        let located = if r.flags & PE_PRESENT != 0 {
            vec![(r.start, r.end, 0, r.off)]
        } else if r.flags & PE_PARENT != 0 {
            chain.locate(1, r.start, r.end, true)?
        } else {
            if r.flags & PE_COW != 0 {
                push(&mut flat, r.start, r.end, r.flags);
            }
            continue;
        };
        for (s, e, layer, off) in located {
            push(&mut flat, s, e, PE_PRESENT);
            match extents.last_mut() {
                Some(x) if x.2 == layer && x.3 + x.1 == off && x.0 + x.1 == voff => x.1 += e - s,
                _ => extents.push((voff, e - s, layer, off)),
            }
            voff += e - s;
        }
    }
    let files = chain
        .layers
        .into_iter()
        .map(|l| l.pages)
        .collect::<Vec<File>>();
    Ok(Some((flat, PageFile { files, extents })))
}

/// The address ranges the images in `dir` hold for task `pid` (data here or in its parents),
/// merged and sorted; None when `dir` has no pagemap (nor record of a sent one) for it. A later
/// iteration may record these pages as PE_PARENT when they did not change.
pub fn held_ranges(dir: &ImageDir, pid: i32) -> Result<Option<Vec<(u64, u64)>>> {
    ranges_with(dir, pid, PE_PRESENT | PE_PARENT)
}

/// The address ranges whose data is in `dir`'s own pages file for task `pid` (not in its
/// parents'), merged and sorted; None when `dir` has no pagemap for it. After pre-dumps, these
/// are the pages written since the last one.
pub fn own_ranges(dir: &ImageDir, pid: i32) -> Result<Option<Vec<(u64, u64)>>> {
    ranges_with(dir, pid, PE_PRESENT)
}

/// The address ranges of task `pid` left for lazy migration (PE_LAZY: the data is on the
/// source), merged and sorted.
pub fn lazy_ranges(dir: &ImageDir, pid: i32) -> Result<Vec<(u64, u64)>> {
    Ok(ranges_with(dir, pid, super::PE_LAZY)?.unwrap_or_default())
}

fn ranges_with(dir: &ImageDir, pid: i32, flags: u32) -> Result<Option<Vec<(u64, u64)>>> {
    // A dump through a page server keeps only the record of what it sent.
    let r = match dir.open_optional(Kind::Pagemap, pid)? {
        Some(r) => Some(r),
        None => dir.open_optional(Kind::SentPagemap, pid)?,
    };
    let Some(mut r) = r else {
        return Ok(None);
    };
    let _: Option<pb::PagemapHead> = r.read_entry()?;
    let entries: Vec<pb::PagemapEntry> = r.collect_all()?;
    let path = r.path().to_owned();
    let runs = check_entries(&entries).map_err(|m| Error::image(&path, m))?;
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
    for run in runs.iter().filter(|r| r.flags & flags != 0) {
        match out.last_mut() {
            Some(l) if l.1 == run.start => l.1 = run.end,
            _ => out.push((run.start, run.end)),
        }
    }
    Ok(Some(out))
}

/// Frees, in the parent images of `dir`, the data of pages `dir` holds itself for task `pid`
/// (`--auto-dedup`, `criu dedup`): their older copies can never be read again through this
/// chain. Returns the bytes freed.
pub fn dedup(dir: &ImageDir, pid: i32) -> Result<u64> {
    let Some(mut chain) = Chain::open(dir, Kind::Pagemap, pid as u64)? else {
        return Ok(0);
    };
    let own: Vec<Run> = chain.layers[0]
        .runs
        .iter()
        .filter(|r| r.flags & PE_PRESENT != 0)
        .copied()
        .collect();
    let mut freed = 0;
    for r in own {
        for (s, e, layer, off) in chain.locate(1, r.start, r.end, false)? {
            let l = &chain.layers[layer];
            punch_hole(&l.pages_path, off, e - s)?;
            freed += e - s;
        }
    }
    Ok(freed)
}

fn punch_hole(path: &std::path::Path, off: u64, len: u64) -> Result<()> {
    use nix::fcntl::{fallocate, FallocateFlags};
    let f = File::options()
        .write(true)
        .open(path)
        .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    fallocate(
        &f,
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        off as i64,
        len as i64,
    )
    .map_err(|e| Error::sys(format!("punch a hole in {}", path.display()), e))
}

/// Pids with a pagemap in `dir`.
pub fn pagemap_pids(dir: &ImageDir) -> Result<Vec<i32>> {
    let rd = std::fs::read_dir(dir.path())
        .map_err(|e| Error::io(format!("read {}", dir.path().display()), e))?;
    let mut pids: Vec<i32> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("pagemap-")?
                .strip_suffix(".img")?
                .parse()
                .ok()
        })
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pe(vaddr: u64, nr: u64, flags: u32) -> pb::PagemapEntry {
        pb::PagemapEntry {
            vaddr,
            compat_nr_pages: nr as u32,
            in_parent: None,
            flags: Some(flags),
            nr_pages: Some(nr),
        }
    }

    fn write_layer(dir: &ImageDir, pages_id: u32, entries: &[pb::PagemapEntry], fill: u8) {
        let mut w = dir.create(Kind::Pagemap, 7).unwrap();
        w.write(&pb::PagemapHead { pages_id }).unwrap();
        let mut data = Vec::new();
        for e in entries {
            w.write(e).unwrap();
            if entry_flags(e) & PE_PRESENT != 0 {
                for p in 0..entry_pages(e) {
                    // Each page starts with its address's page number and the layer's mark.
                    let mut page = vec![fill; PAGE_SIZE as usize];
                    page[..8].copy_from_slice(&(e.vaddr / PAGE_SIZE + p).to_ne_bytes());
                    data.extend(page);
                }
            }
        }
        w.finish().unwrap();
        std::fs::write(dir.file(&pages_file_name(pages_id)), data).unwrap();
    }

    #[test]
    fn chain_resolves_through_parents_and_dedup_frees_old_copies() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        for d in ["0", "1", "2"] {
            std::fs::create_dir(base.join(d)).unwrap();
        }
        std::os::unix::fs::symlink("../0", base.join("1/parent")).unwrap();
        std::os::unix::fs::symlink("../1", base.join("2/parent")).unwrap();
        let d0 = ImageDir::new(base.join("0"));
        let d1 = ImageDir::new(base.join("1"));
        let d2 = ImageDir::new(base.join("2"));
        // 0: pages 16..24; 1: 18..20 rewritten, rest parent; 2: 16 rewritten, 17..24 parent,
        // page 30 new.
        write_layer(&d0, 1, &[pe(16 << 12, 8, PE_PRESENT)], 0xa0);
        write_layer(
            &d1,
            1,
            &[
                pe(16 << 12, 2, PE_PARENT),
                pe(18 << 12, 2, PE_PRESENT),
                pe(20 << 12, 4, PE_PARENT),
            ],
            0xa1,
        );
        write_layer(
            &d2,
            1,
            &[
                pe(16 << 12, 1, PE_PRESENT),
                pe(17 << 12, 7, PE_PARENT),
                pe(30 << 12, 1, PE_PRESENT),
            ],
            0xa2,
        );
        let (flat, pf) = open_pages(&d2, Kind::Pagemap, 7).unwrap().unwrap();
        assert_eq!(flat.len(), 2);
        assert_eq!((flat[0].vaddr, entry_pages(&flat[0])), (16 << 12, 8));
        assert_eq!((flat[1].vaddr, entry_pages(&flat[1])), (30 << 12, 1));
        let marks = [0xa2, 0xa0, 0xa1, 0xa1, 0xa0, 0xa0, 0xa0, 0xa0, 0xa2];
        let pages = [16u64, 17, 18, 19, 20, 21, 22, 23, 30];
        let mut buf = vec![0u8; PAGE_SIZE as usize];
        for (k, (&page, &mark)) in pages.iter().zip(&marks).enumerate() {
            pf.read_exact_at(&mut buf, k as u64 * PAGE_SIZE).unwrap();
            assert_eq!(u64::from_ne_bytes(buf[..8].try_into().unwrap()), page);
            assert_eq!(buf[100], mark, "page {page}");
        }
        assert_eq!(
            held_ranges(&d1, 7).unwrap().unwrap(),
            vec![(16 << 12, 24 << 12)]
        );
        // Page 16 of layer 0 is dead once layer 2 has its own; so are 18-19 after layer 1.
        assert_eq!(dedup(&d2, 7).unwrap(), PAGE_SIZE);
        assert_eq!(dedup(&d1, 7).unwrap(), 2 * PAGE_SIZE);
        let (_, pf) = open_pages(&d2, Kind::Pagemap, 7).unwrap().unwrap();
        for (k, (&page, &mark)) in pages.iter().zip(&marks).enumerate() {
            pf.read_exact_at(&mut buf, k as u64 * PAGE_SIZE).unwrap();
            assert_eq!(u64::from_ne_bytes(buf[..8].try_into().unwrap()), page);
            assert_eq!(buf[100], mark, "page {page} after dedup");
        }
        let raw0 = std::fs::read(d0.file(&pages_file_name(1))).unwrap();
        assert!(raw0[..PAGE_SIZE as usize].iter().all(|&b| b == 0));
    }

    #[test]
    fn broken_chain_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let d = ImageDir::new(tmp.path());
        write_layer(&d, 1, &[pe(16 << 12, 2, PE_PARENT)], 0);
        let err = open_pages(&d, Kind::Pagemap, 7).err().unwrap().to_string();
        assert!(err.contains("parent"), "{err}");
        write_layer(
            &d,
            1,
            &[pe(16 << 12, 2, PE_PRESENT), pe(17 << 12, 1, PE_PRESENT)],
            0,
        );
        let err = open_pages(&d, Kind::Pagemap, 7).err().unwrap().to_string();
        assert!(err.contains("out of order"), "{err}");
        write_layer(&d, 1, &[pe(!4095, 2, PE_PRESENT)], 0);
        assert!(open_pages(&d, Kind::Pagemap, 7).is_err());
    }
}
