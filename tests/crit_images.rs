//! Our images, read by Debian's `crit` (CRIU 3.17's own image tool): what we write must be what
//! crit decodes, field by field, and what crit encodes must be what we read.
//!
//! crit comes from `scripts/get-crit.sh` (or the `CRIT` environment variable). These tests fail,
//! not skip, without it.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use criu::images::{ImageDir, Kind};
use criu::pb;
use prost::Message;
use prost_reflect::prost_types::{FieldDescriptorProto, FileDescriptorSet};
use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, ReflectMessage, Value};
use serde_json::Value as Json;

// ---------------------------------------------------------------------------------------------
// Running crit

fn crit_path() -> PathBuf {
    let p = std::env::var_os("CRIT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/crit/crit"));
    assert!(
        p.is_file(),
        "crit not found at {}: run scripts/get-crit.sh first (or set CRIT to a crit command)",
        p.display()
    );
    p
}

/// crit's schemas, written by get-crit.sh next to the wrapper (or `CRIT_DESCRIPTORS`).
fn crit_descriptors_path() -> PathBuf {
    let p = std::env::var_os("CRIT_DESCRIPTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| crit_path().with_file_name("crit-descriptors.pb"));
    assert!(
        p.is_file(),
        "crit's schemas not found at {}: run scripts/get-crit.sh first (or set CRIT_DESCRIPTORS)",
        p.display()
    );
    p
}

/// Runs crit and returns its stdout; any failure fails the test with crit's stderr.
fn crit<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> String {
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = Command::new(crit_path())
        .args(&args)
        .output()
        .expect("running crit");
    assert!(
        out.status.success(),
        "crit {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("crit output is UTF-8")
}

/// Runs crit expecting it to fail; returns its stderr.
fn crit_fails<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> String {
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = Command::new(crit_path())
        .args(&args)
        .output()
        .expect("running crit");
    assert!(!out.status.success(), "crit {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn crit_decode(path: &Path, pretty: bool) -> Json {
    let mut args = vec![OsStr::new("decode"), OsStr::new("-i"), path.as_os_str()];
    if pretty {
        args.push(OsStr::new("--pretty"));
    }
    serde_json::from_str(&crit(args)).expect("crit decode prints JSON")
}

fn crit_encode(json: &Json, out: &Path) {
    let src = out.with_extension("json");
    std::fs::write(&src, serde_json::to_vec(json).unwrap()).unwrap();
    crit([
        OsStr::new("encode"),
        OsStr::new("-i"),
        src.as_os_str(),
        OsStr::new("-o"),
        out.as_os_str(),
    ]);
}

// ---------------------------------------------------------------------------------------------
// Schemas

fn our_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).expect("our descriptors"))
}

/// Message name (crit's have no package) -> field number -> field.
type Fields = BTreeMap<String, BTreeMap<i32, FieldDescriptorProto>>;

fn message_fields(set: &FileDescriptorSet) -> Fields {
    fn walk(prefix: &str, d: &prost_reflect::prost_types::DescriptorProto, out: &mut Fields) {
        let name = format!("{prefix}{}", d.name());
        for n in &d.nested_type {
            walk(&format!("{name}."), n, out);
        }
        let fields = d.field.iter().map(|f| (f.number(), f.clone())).collect();
        out.insert(name, fields);
    }
    let mut out = Fields::new();
    for f in &set.file {
        for d in &f.message_type {
            walk("", d, &mut out);
        }
    }
    out
}

fn crit_set() -> &'static FileDescriptorSet {
    static SET: OnceLock<FileDescriptorSet> = OnceLock::new();
    SET.get_or_init(|| {
        let bytes = std::fs::read(crit_descriptors_path()).unwrap();
        FileDescriptorSet::decode(bytes.as_slice()).expect("crit's descriptors")
    })
}

fn crit_fields() -> &'static Fields {
    static F: OnceLock<Fields> = OnceLock::new();
    F.get_or_init(|| message_fields(crit_set()))
}

/// Type names without a leading dot or our package, so ours and crit's compare.
fn bare(type_name: &str) -> &str {
    let t = type_name.trim_start_matches('.');
    t.strip_prefix("criu.").unwrap_or(t)
}

/// Our image schemas: the RPC protocol's rpc.proto is not an image (and crit's copy is older).
fn image_schemas() -> FileDescriptorSet {
    let mut set = FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    set.file.retain(|f| f.name() != "rpc.proto");
    set
}

/// Every field crit knows in a message we define must be the same field in ours: number, name,
/// label, wire type, message/enum type, default and packing. This covers the messages no test
/// below fills in too.
#[test]
fn schemas_match_crit() {
    let ours = message_fields(&image_schemas());
    let theirs = crit_fields();
    let mut errors = Vec::new();
    let mut newer = Vec::new();
    let mut compared = 0;
    for (msg, our_fields) in &ours {
        let Some(crit_fields) = theirs.get(msg) else {
            newer.push(msg.clone());
            continue;
        };
        for (num, f) in crit_fields {
            let Some(o) = our_fields.get(num) else {
                // Only the other architectures' thread info is deliberately absent.
                if !(msg == "core_entry" && f.name().starts_with("ti_")) {
                    errors.push(format!("{msg}.{} = {num}: missing in ours", f.name()));
                }
                continue;
            };
            let key = |f: &FieldDescriptorProto| {
                (
                    f.name().to_string(),
                    f.label(),
                    f.r#type(),
                    bare(f.type_name()).to_string(),
                    f.default_value().to_string(),
                    f.options.as_ref().and_then(|o| o.packed).unwrap_or(false),
                )
            };
            // CRIU 4.2 renamed this one when it added the 64-bit nr_pages = 5: same bytes.
            let renamed = msg == "pagemap_entry" && *num == 2 && o.name() == "compat_nr_pages";
            if renamed {
                assert_eq!(f.name(), "nr_pages");
            } else if key(o) != key(f) {
                errors.push(format!(
                    "{msg} field {num}: ours {:?}, crit {:?}",
                    key(o),
                    key(f)
                ));
            }
            compared += 1;
        }
        for (num, o) in our_fields {
            if !crit_fields.contains_key(num) {
                newer.push(format!("{msg}.{}", o.name()));
            }
        }
    }
    // Enums: every value crit knows means the same in ours.
    let enums = |set: &FileDescriptorSet| {
        let mut m = BTreeMap::new();
        for f in &set.file {
            for e in &f.enum_type {
                m.insert(e.name().to_string(), e.value.clone());
            }
            for d in &f.message_type {
                for e in &d.enum_type {
                    m.insert(format!("{}.{}", d.name(), e.name()), e.value.clone());
                }
            }
        }
        m
    };
    let our_enums = enums(&image_schemas());
    let crit_enums = enums(crit_set());
    for (name, values) in &our_enums {
        let Some(cv) = crit_enums.get(name) else {
            errors.push(format!("crit has no enum {name}"));
            continue;
        };
        for v in cv {
            if !values
                .iter()
                .any(|o| o.name() == v.name() && o.number() == v.number())
            {
                errors.push(format!(
                    "enum {name}: crit's {} = {} differs",
                    v.name(),
                    v.number()
                ));
            }
        }
    }
    assert!(
        errors.is_empty(),
        "schema differences:\n{}",
        errors.join("\n")
    );
    // What crit 3.17 cannot show (CRIU added it later, or it is ours: xsave_area, packets).
    let expected = [
        "creds_entry.no_new_privs",
        "creds_entry.cap_amb",
        "eventfd_file_entry.semaphore",
        "file_entry.pidfd",
        "inet_sk_entry.tcp_opts",
        "inventory_entry.plugins_entry",
        "inventory_entry.dump_criu_run_id",
        "inventory_entry.allow_uprobes",
        "ip_opts_entry.pktinfo",
        "ip_opts_entry.tos",
        "ip_opts_entry.ttl",
        "memfd_inode_entry.mode",
        "pagemap_entry.nr_pages",
        "pidfd_entry",
        "pipe_data_entry.packets",
        "plugins_entry",
        "task_core_entry.stop_signo",
        "task_core_entry.membarrier_registration_mask",
        "tcp_opts_entry",
        "thread_core_entry.cg_set",
        "user_x86_cet_entry",
        "user_x86_fpregs_entry.xsave_area",
        "user_x86_xsave_entry.cet",
    ];
    newer.sort();
    let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(newer, expected);
    assert!(compared > 500, "only {compared} fields compared");
}

// ---------------------------------------------------------------------------------------------
// Comparing what we wrote with what crit decoded

/// One entry we wrote: the message (as our schema sees it) and the raw bytes after it, in the
/// shape crit prints them under "extra".
struct Entry {
    msg: DynamicMessage,
    extra: Option<Json>,
}

/// Our typed message as a reflective one, by its name in proto/.
fn entry<M: Message>(name: &str, m: &M) -> Entry {
    let desc = our_pool()
        .get_message_by_name(&format!("criu.{name}"))
        .unwrap_or_else(|| panic!("no message {name} in proto/"));
    let msg = DynamicMessage::decode(desc, m.encode_to_vec().as_slice()).unwrap();
    Entry { msg, extra: None }
}

impl Entry {
    fn extra(mut self, extra: Json) -> Entry {
        self.extra = Some(extra);
        self
    }
}

/// crit's base64 (Python's encodebytes: wrapped lines).
fn base64(s: &str) -> Vec<u8> {
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = ALPHA.iter().position(|&a| a == c).expect("base64 digit") as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn b64(bytes: &[u8]) -> Json {
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |a, &b| a << 8 | b as u32) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(ALPHA[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    Json::String(s)
}

/// crit prints unix socket names with Python's quopri (quoted-printable).
fn quopri(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' && b.get(i + 1) == Some(&b'\n') {
            i += 2;
        } else if b[i] == b'=' {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[derive(Default)]
struct Compare {
    errors: Vec<String>,
    /// Fields we wrote that crit 3.17 does not know, as message.field.
    unknown_to_crit: BTreeSet<String>,
}

impl Compare {
    fn message(&mut self, at: &str, ours: &DynamicMessage, theirs: &Json) {
        let Some(obj) = theirs.as_object() else {
            self.errors
                .push(format!("{at}: crit shows {theirs}, not a message"));
            return;
        };
        let msg = ours.descriptor();
        let crit_msg = crit_fields().get(msg.name());
        let mut seen = BTreeSet::new();
        for (fd, value) in ours.fields() {
            // crit names a field by its own schema (CRIU renamed a few).
            let crit_name = crit_msg
                .and_then(|m| m.get(&(fd.number() as i32)))
                .map(|f| f.name());
            let Some(name) = crit_name else {
                self.unknown_to_crit
                    .insert(format!("{}.{}", msg.name(), fd.name()));
                continue;
            };
            let here = format!("{at}.{name}");
            match obj.get(name) {
                None => self
                    .errors
                    .push(format!("{here}: written but crit does not show it")),
                Some(j) => {
                    seen.insert(name.to_string());
                    self.value(&here, &fd, value, j);
                }
            }
        }
        for k in obj.keys().filter(|k| !seen.contains(*k)) {
            self.errors.push(format!(
                "{at}.{k}: crit shows {} that we did not write",
                obj[k]
            ));
        }
    }

    fn value(&mut self, at: &str, fd: &FieldDescriptor, v: &Value, j: &Json) {
        let ok = match v {
            Value::List(items) => {
                let Some(arr) = j.as_array().filter(|a| a.len() == items.len()) else {
                    self.errors.push(format!(
                        "{at}: {} items written, crit shows {j}",
                        items.len()
                    ));
                    return;
                };
                for (i, (item, ji)) in items.iter().zip(arr).enumerate() {
                    self.value(&format!("{at}[{i}]"), fd, item, ji);
                }
                return;
            }
            Value::Message(m) => return self.message(at, m, j),
            Value::Bool(b) => j.as_bool() == Some(*b),
            Value::I32(x) => j.as_i64() == Some(*x as i64),
            Value::I64(x) => j.as_i64() == Some(*x),
            Value::U32(x) => j.as_u64() == Some(*x as u64),
            Value::U64(x) => j.as_u64() == Some(*x),
            Value::String(s) => j.as_str() == Some(s.as_str()),
            Value::Bytes(b) => match j.as_str() {
                Some(s) if fd.full_name() == "criu.unix_sk_entry.name" => quopri(s) == b[..],
                Some(s) => base64(s) == b[..],
                None => false,
            },
            Value::EnumNumber(n) => {
                let e = fd.kind();
                let name = e
                    .as_enum()
                    .and_then(|e| e.get_value(*n))
                    .map(|v| v.name().to_string());
                name.is_some() && j.as_str() == name.as_deref()
            }
            other => panic!("{at}: no such field type in our images: {other:?}"),
        };
        if !ok {
            self.errors
                .push(format!("{at}: wrote {v:?}, crit shows {j}"));
        }
    }
}

/// Decodes `file` with crit and compares it with `entries`, entry by entry and field by field.
/// Returns the fields crit could not show because it does not know them.
fn check(file: &Path, magic: &str, entries: &[Entry]) -> BTreeSet<String> {
    let img = crit_decode(file, false);
    assert_eq!(img["magic"], magic, "{}: magic", file.display());
    let got = img["entries"].as_array().expect("entries");
    assert_eq!(
        got.len(),
        entries.len(),
        "{}: number of entries: {img}",
        file.display()
    );
    let mut cmp = Compare::default();
    for (i, (ours, theirs)) in entries.iter().zip(got).enumerate() {
        let at = format!("{}[{i}]", file.file_name().unwrap().to_string_lossy());
        let mut theirs = theirs.clone();
        let extra = theirs.as_object_mut().unwrap().remove("extra");
        match (&ours.extra, &extra) {
            (None, None) => {}
            (Some(Json::String(want)), Some(Json::String(got))) => {
                if base64(want) != base64(got) {
                    cmp.errors.push(format!("{at}: extra bytes differ"));
                }
            }
            (Some(Json::Object(want)), Some(Json::Object(got))) => {
                let b = |o: &serde_json::Map<String, Json>, k| base64(o[k].as_str().unwrap());
                for k in want.keys() {
                    if b(want, k) != b(got, k) {
                        cmp.errors.push(format!("{at}: extra {k} differs"));
                    }
                }
                assert_eq!(want.len(), got.len(), "{at}: extra parts");
            }
            (w, g) => cmp
                .errors
                .push(format!("{at}: extra: wrote {w:?}, crit shows {g:?}")),
        }
        cmp.message(&at, &ours.msg, &theirs);
    }
    assert!(
        cmp.errors.is_empty(),
        "crit disagrees:\n{}",
        cmp.errors.join("\n")
    );
    cmp.unknown_to_crit
}

fn no_unknown() -> BTreeSet<String> {
    BTreeSet::new()
}

fn names(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn tmpdir() -> (tempfile::TempDir, ImageDir) {
    let t = tempfile::tempdir().unwrap();
    let d = ImageDir::new(t.path());
    (t, d)
}

// ---------------------------------------------------------------------------------------------
// Realistic entries: a small process (pid 100) with a tty, a pipe, a few files and sockets

const PID: u32 = 100;
const RLIM_INFINITY: u64 = u64::MAX;

fn fown() -> pb::FownEntry {
    pb::FownEntry {
        uid: 1000,
        euid: 1000,
        signum: 0,
        pid_type: 0,
        pid: 0,
    }
}

fn gpregs() -> pb::UserX86RegsEntry {
    pb::UserX86RegsEntry {
        r15: 0,
        r14: 0x7ffd_e2c0_1340,
        r13: 1,
        r12: 0x5555_5555_6040,
        bp: 0x7ffd_e2c0_1230,
        bx: 0,
        r11: 0x246,
        r10: 8,
        r9: 0,
        r8: u64::MAX,
        // -ERESTART_RESTARTBLOCK: interrupted in clock_nanosleep.
        ax: (-516i64) as u64,
        cx: 0x7f3a_1c2e_5a34,
        dx: 0,
        si: 0x7ffd_e2c0_1200,
        di: 1,
        orig_ax: 230,
        ip: 0x7f3a_1c2e_5a34,
        cs: 0x33,
        flags: 0x246,
        sp: 0x7ffd_e2c0_11c8,
        ss: 0x2b,
        fs_base: 0x7f3a_1c1f_9740,
        gs_base: 0,
        ds: 0,
        es: 0,
        fs: 0,
        gs: 0,
        mode: Some(pb::UserX86RegsMode::Native as i32),
    }
}

/// What CRIU writes on an AVX-512 + PKU machine (no MPX, no CET), plus our raw area.
fn fpregs() -> pb::UserX86FpregsEntry {
    let words = |n: usize, seed: u64| (0..n as u64).map(move |i| seed.wrapping_mul(i + 1));
    pb::UserX86FpregsEntry {
        cwd: 0x37f,
        swd: 0,
        twd: 0,
        fop: 0,
        rip: 0,
        rdp: 0,
        mxcsr: 0x1f80,
        mxcsr_mask: 0x2ffff,
        st_space: words(32, 0x0101_0101).map(|w| w as u32).collect(),
        xmm_space: words(64, 0x9e37_79b9).map(|w| w as u32).collect(),
        padding: vec![],
        xsave: Some(pb::UserX86XsaveEntry {
            // x87, SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM, PKRU.
            xstate_bv: 0x2e7,
            ymmh_space: words(64, 0x8529_b1a3).map(|w| w as u32).collect(),
            bndreg_state: vec![],
            bndcsr_state: vec![],
            opmask_reg: words(8, 0xff).collect(),
            zmm_upper: words(64, 0x9e37_79b9_7f4a_7c15).collect(),
            hi16_zmm: words(128, 0xbf58_476d_1ce4_e5b9).collect(),
            pkru: vec![0x5555_5554, 0],
            cet: None,
        }),
        xsave_area: Some((0..11008u32).map(|i| (i * 7 % 251) as u8).collect()),
    }
}

/// The three TLS slots of a 64-bit task: all empty.
fn tls() -> Vec<pb::UserDescT> {
    (12..15)
        .map(|n| pb::UserDescT {
            entry_number: n,
            ..Default::default()
        })
        .collect()
}

fn creds() -> pb::CredsEntry {
    pb::CredsEntry {
        uid: 1000,
        gid: 1000,
        euid: 1000,
        egid: 1000,
        suid: 1000,
        sgid: 1000,
        fsuid: 1000,
        fsgid: 1000,
        cap_inh: vec![0, 0],
        cap_prm: vec![0, 0],
        cap_eff: vec![0, 0],
        cap_bnd: vec![0xffff_ffff, 0x1ff],
        secbits: 0,
        groups: vec![1000, 24, 27],
        lsm_profile: None,
        lsm_sockcreate: None,
        apparmor_data: None,
        no_new_privs: Some(1),
        cap_amb: vec![0, 0],
    }
}

/// A raw 128-byte siginfo_t: SIGUSR2 from kill(2) by pid 42, uid 1000.
fn siginfo() -> pb::SiginfoEntry {
    let mut s = vec![0u8; 128];
    s[0..4].copy_from_slice(&12i32.to_ne_bytes());
    s[16..20].copy_from_slice(&42i32.to_ne_bytes());
    s[20..24].copy_from_slice(&1000u32.to_ne_bytes());
    pb::SiginfoEntry { siginfo: s }
}

fn thread_core(tid: u32) -> pb::ThreadCoreEntry {
    pb::ThreadCoreEntry {
        futex_rla: 0x7f3a_1c1f_9a20,
        futex_rla_len: 24,
        sched_nice: Some(-5),
        sched_policy: Some(0),
        sched_prio: Some(0),
        blk_sigset: Some(1 << (17 - 1)),
        sas: Some(pb::ThreadSasEntry {
            ss_sp: 0x7f3a_1000_0000,
            ss_size: 8192,
            ss_flags: 0,
        }),
        pdeath_sig: Some(9),
        signals_p: Some(pb::SignalQueueEntry {
            signals: vec![siginfo()],
        }),
        creds: Some(creds()),
        seccomp_mode: Some(pb::SeccompMode::Filter as i32),
        seccomp_filter: Some(1),
        comm: Some(if tid == PID { "sleeper" } else { "worker" }.into()),
        blk_sigset_extended: None,
        rseq_entry: Some(pb::RseqEntry {
            rseq_abi_pointer: 0x7f3a_1c1f_9fe0 + (tid as u64) * 0x1000,
            rseq_abi_size: 32,
            signature: 0x5305_3053,
            rseq_cs_pointer: Some(0),
        }),
        cg_set: Some(1),
    }
}

fn sigactions() -> Vec<pb::SaEntry> {
    // Signals 1..64 but SIGKILL and SIGSTOP, as CRIU dumps them.
    (1..=64u64)
        .filter(|s| *s != 9 && *s != 19)
        .map(|sig| pb::SaEntry {
            sigaction: match sig {
                10 => 0x5555_5555_5189, // SIGUSR1: a handler
                13 => 1,                // SIGPIPE: SIG_IGN
                _ => 0,
            },
            flags: if sig == 10 { 0x1400_0004 } else { 0x0400_0000 },
            restorer: 0x7f3a_1c25_a050,
            mask: if sig == 10 { 1 << (12 - 1) } else { 0 },
            compat_sigaction: Some(false),
            mask_extended: None,
        })
        .collect()
}

fn task_core() -> pb::TaskCoreEntry {
    let zero = pb::ItimerEntry::default();
    let mut rlimits: Vec<_> = (0..16)
        .map(|_| pb::RlimitEntry {
            cur: RLIM_INFINITY,
            max: RLIM_INFINITY,
        })
        .collect();
    rlimits[3] = pb::RlimitEntry {
        cur: 8 << 20,
        max: RLIM_INFINITY,
    }; // RLIMIT_STACK
    rlimits[7] = pb::RlimitEntry {
        cur: 1024,
        max: 524288,
    }; // RLIMIT_NOFILE
    pb::TaskCoreEntry {
        task_state: 1,
        exit_code: 0,
        personality: 0,
        flags: 0x0040_0040,
        blk_sigset: 1 << (17 - 1),
        comm: "sleeper".into(),
        timers: Some(pb::TaskTimersEntry {
            real: pb::ItimerEntry {
                isec: 1,
                iusec: 0,
                vsec: 0,
                vusec: 500_000,
            },
            virt: zero,
            prof: zero,
            posix: vec![pb::PosixTimerEntry {
                it_id: 0,
                clock_id: 1,
                si_signo: 14,
                it_sigev_notify: 0,
                sival_ptr: 0x5555_5555_a2a0,
                overrun: 0,
                isec: 0,
                insec: 250_000_000,
                vsec: 0,
                vnsec: 123_456_789,
                notify_thread_id: None,
            }],
        }),
        rlimits: Some(pb::TaskRlimitsEntry { rlimits }),
        cg_set: None,
        // Present but empty: crit must show {} for it.
        signals_s: Some(pb::SignalQueueEntry::default()),
        old_seccomp_mode: None,
        old_seccomp_filter: None,
        loginuid: Some(u32::MAX),
        oom_score_adj: Some(-500),
        sigactions: sigactions(),
        child_subreaper: Some(false),
        blk_sigset_extended: None,
        stop_signo: None,
        membarrier_registration_mask: Some(0),
    }
}

fn core(tid: u32) -> pb::CoreEntry {
    pb::CoreEntry {
        mtype: pb::core_entry::March::X8664 as i32,
        thread_info: Some(pb::ThreadInfoX86 {
            clear_tid_addr: 0x7f3a_1c1f_9a10,
            gpregs: gpregs(),
            fpregs: fpregs(),
            tls: tls(),
        }),
        tc: (tid == PID).then(task_core),
        ids: None,
        thread_core: Some(thread_core(tid)),
    }
}

fn ids() -> pb::TaskKobjIdsEntry {
    pb::TaskKobjIdsEntry {
        vm_id: 1,
        files_id: 1,
        fs_id: 1,
        sighand_id: 1,
        pid_ns_id: Some(2),
        net_ns_id: Some(3),
        ipc_ns_id: Some(4),
        uts_ns_id: Some(5),
        mnt_ns_id: Some(6),
        user_ns_id: Some(7),
        cgroup_ns_id: Some(8),
        time_ns_id: Some(9),
    }
}

const HEAP: u64 = 0x5555_5557_9000;
const STACK_END: u64 = 0x7ffd_e2c2_1000;

fn vma(
    start: u64,
    end: u64,
    prot: u32,
    flags: u32,
    status: u32,
    shmid: u64,
    pgoff: u64,
) -> pb::VmaEntry {
    pb::VmaEntry {
        start,
        end,
        pgoff,
        shmid,
        prot,
        flags,
        status,
        fd: -1,
        madv: None,
        fdflags: None,
    }
}

fn mm() -> pb::MmEntry {
    const R: u32 = 1;
    const W: u32 = 2;
    const X: u32 = 4;
    const PRIV: u32 = 0x02;
    const ANON_PRIV: u32 = 0x22;
    // VMA_AREA_REGULAR | VMA_FILE_PRIVATE, | VMA_AREA_HEAP | VMA_ANON_PRIVATE, ...
    const FILE: u32 = 0x41;
    let exe = |start, end, prot, pgoff| pb::VmaEntry {
        fdflags: Some(0o100000),
        ..vma(start, end, prot, PRIV, FILE, 3, pgoff)
    };
    let vmas = vec![
        exe(0x5555_5555_4000, 0x5555_5555_5000, R, 0),
        exe(0x5555_5555_5000, 0x5555_5555_6000, R | X, 0x1000),
        exe(0x5555_5555_6000, 0x5555_5555_7000, R | W, 0x2000),
        vma(HEAP, HEAP + 0x21000, R | W, ANON_PRIV, 0x221, 0, 0),
        pb::VmaEntry {
            madv: Some(1 << 10), // MADV_DONTFORK
            ..vma(
                0x7f3a_1c00_0000,
                0x7f3a_1c10_0000,
                R | W,
                ANON_PRIV,
                0x201,
                0,
                0,
            )
        },
        // An AIO ring: VMA_AREA_REGULAR | VMA_AREA_AIORING | VMA_ANON_SHARED.
        vma(
            0x7f3a_1c30_0000,
            0x7f3a_1c30_2000,
            R | W,
            0x01,
            0x2101,
            0x1c30_0000,
            0,
        ),
        vma(STACK_END - 0x21000, STACK_END, R | W, 0x122, 0x203, 0, 0),
        vma(
            0x7ffd_e2d8_c000,
            0x7ffd_e2d9_0000,
            R,
            ANON_PRIV,
            0x1001,
            0,
            0,
        ),
        vma(
            0x7ffd_e2d9_0000,
            0x7ffd_e2d9_2000,
            R | X,
            ANON_PRIV,
            0x9,
            0,
            0,
        ),
        vma(
            0xffff_ffff_ff60_0000,
            0xffff_ffff_ff60_1000,
            X,
            ANON_PRIV,
            0x4,
            0,
            0,
        ),
    ];
    let auxv: Vec<u64> = [
        (33, 0x7ffd_e2d9_0000),
        (16, 0x178b_fbff),
        (6, 4096),
        (17, 100),
        (3, 0x5555_5555_4040),
        (4, 56),
        (5, 13),
        (7, 0x7f3a_1c2f_1000),
        (9, 0x5555_5555_5060),
        (11, 1000),
        (12, 1000),
        (23, 0),
        (25, 0x7ffd_e2c2_0b89),
        (31, 0x7ffd_e2c2_0fe8),
        (0, 0),
    ]
    .iter()
    .flat_map(|&(t, v)| [t, v])
    .collect();
    pb::MmEntry {
        mm_start_code: 0x5555_5555_5000,
        mm_end_code: 0x5555_5555_5f21,
        mm_start_data: 0x5555_5555_6d90,
        mm_end_data: 0x5555_5555_7010,
        mm_start_stack: 0x7ffd_e2c2_0c70,
        mm_start_brk: HEAP,
        mm_brk: HEAP + 0x21000,
        mm_arg_start: 0x7ffd_e2c2_0f7a,
        mm_arg_end: 0x7ffd_e2c2_0f8c,
        mm_env_start: 0x7ffd_e2c2_0f8c,
        mm_env_end: 0x7ffd_e2c2_0fe8,
        exe_file_id: 3,
        mm_saved_auxv: auxv,
        vmas,
        dumpable: Some(1),
        aios: vec![pb::AioRingEntry {
            id: 0x7f3a_1c30_0000,
            nr_req: 128,
            ring_len: 0x2000,
        }],
        thp_disabled: Some(false),
    }
}

/// (vaddr, nr_pages, flags) of the dumped memory; PE_PRESENT ones have data in pages-1.img.
fn page_runs() -> Vec<(u64, u64, u32)> {
    use criu::images::{PE_LAZY, PE_PARENT, PE_PRESENT};
    vec![
        (0x5555_5555_6000, 1, PE_PRESENT),
        (HEAP, 3, PE_PRESENT),
        (HEAP + 0x5000, 2, PE_PARENT),
        (0x7f3a_1c00_0000, 4, PE_PRESENT | PE_LAZY),
        (STACK_END - 0x2000, 2, PE_PRESENT),
    ]
}

fn pagemap_entries() -> Vec<pb::PagemapEntry> {
    page_runs()
        .into_iter()
        .map(|(vaddr, n, flags)| pb::PagemapEntry {
            vaddr,
            // CRIU 4.2 writes 0 here; the count too lets crit 3.17 and older CRIUs read it.
            compat_nr_pages: n as u32,
            in_parent: None,
            flags: Some(flags),
            nr_pages: Some(n),
        })
        .collect()
}

fn reg(id: u32, name: &str, flags: u32, mode: u32) -> pb::FileEntry {
    pb::FileEntry {
        r#type: pb::FdTypes::Reg as i32,
        id,
        reg: Some(pb::RegFileEntry {
            id,
            flags,
            pos: 0,
            fown: fown(),
            name: name.into(),
            mnt_id: None,
            size: (mode & 0o170000 == 0o100000).then_some(16384),
            ext: None,
            mode: Some(mode),
            build_id: vec![],
            checksum: None,
            checksum_config: None,
            checksum_parameter: None,
        }),
        ..Default::default()
    }
}

fn sk_opts() -> pb::SkOptsEntry {
    pb::SkOptsEntry {
        so_sndbuf: 16384,
        so_rcvbuf: 131072,
        so_snd_tmo_sec: 0,
        so_snd_tmo_usec: 0,
        so_rcv_tmo_sec: 5,
        so_rcv_tmo_usec: 250_000,
        reuseaddr: Some(true),
        so_priority: Some(0),
        so_rcvlowat: Some(1),
        so_mark: Some(0),
        so_passcred: Some(false),
        so_passsec: Some(false),
        so_dontroute: Some(false),
        so_no_check: Some(false),
        so_bound_dev: None,
        // "ret #0xffff" as one sock_filter.
        so_filter: vec![0x0000_ffff_0000_0006],
        so_reuseport: Some(false),
        so_broadcast: Some(false),
        so_keepalive: Some(true),
        tcp_keepcnt: None,
        tcp_keepidle: None,
        tcp_keepintvl: None,
        so_oobinline: Some(0),
        so_linger: Some(0),
        so_buf_lock: Some(0),
    }
}

fn fh() -> pb::FhEntry {
    pb::FhEntry {
        bytes: 8,
        r#type: 1,
        handle: (0..16)
            .map(|i| if i == 0 { 0x0000_0011_0000_2a31 } else { 0 })
            .collect(),
        path: Some("/home/user/watched".into()),
        mnt_id: Some(25),
    }
}

/// Every kind of file crit 3.17 knows (pidfds it does not).
fn files() -> Vec<pb::FileEntry> {
    let ty = |t: pb::FdTypes, id| pb::FileEntry {
        r#type: t as i32,
        id,
        ..Default::default()
    };
    let mut exe = reg(3, "/usr/bin/sleeper", 0o100000, 0o100755);
    exe.reg.as_mut().unwrap().build_id = vec![
        0x8d2c_6a1f,
        0x3b9e_0c44,
        0x1d7f_aa02,
        0x66e1_9b30,
        0x0c5d_e7a8,
    ];
    let mut log = reg(1, "/home/user/data.log", 0o102001, 0o100644);
    log.reg.as_mut().unwrap().pos = 4096;
    vec![
        log,
        reg(2, "/home/user", 0o200000, 0o40755),
        exe,
        reg(4, "/", 0o200000, 0o40755),
        pb::FileEntry {
            pipe: Some(pb::PipeEntry {
                id: 5,
                pipe_id: 123456,
                flags: 0,
                fown: fown(),
            }),
            ..ty(pb::FdTypes::Pipe, 5)
        },
        pb::FileEntry {
            pipe: Some(pb::PipeEntry {
                id: 6,
                pipe_id: 123456,
                flags: 0o4001,
                fown: fown(),
            }),
            ..ty(pb::FdTypes::Pipe, 6)
        },
        pb::FileEntry {
            tty: Some(pb::TtyFileEntry {
                id: 7,
                tty_info_id: 1,
                flags: 0o100002,
                fown: fown(),
                regf_id: Some(8),
            }),
            ..ty(pb::FdTypes::Tty, 7)
        },
        reg(8, "/dev/pts/3", 0o100002, 0o20620),
        pb::FileEntry {
            efd: Some(pb::EventfdFileEntry {
                id: 9,
                flags: 0o4002,
                fown: fown(),
                counter: 5,
                // Ours only: crit 3.17 cannot show it.
                semaphore: None,
            }),
            ..ty(pb::FdTypes::Eventfd, 9)
        },
        pb::FileEntry {
            epfd: Some(pb::EventpollFileEntry {
                id: 10,
                flags: 0o2,
                fown: fown(),
                tfd: vec![pb::EventpollTfdEntry {
                    id: 10,
                    tfd: 9,
                    events: 0x8000_0001,
                    data: 0xdead_beef_0000_0009,
                    dev: Some(14),
                    inode: Some(1043),
                    pos: Some(0),
                }],
            }),
            ..ty(pb::FdTypes::Eventpoll, 10)
        },
        pb::FileEntry {
            sgfd: Some(pb::SignalfdEntry {
                id: 11,
                flags: 0o4002,
                fown: fown(),
                sigmask: 1 << (10 - 1),
            }),
            ..ty(pb::FdTypes::Signalfd, 11)
        },
        pb::FileEntry {
            tfd: Some(pb::TimerfdEntry {
                id: 12,
                flags: 0o2,
                fown: fown(),
                clockid: 1,
                ticks: 0,
                settime_flags: 0,
                vsec: 0,
                vnsec: 500_000_000,
                isec: 1,
                insec: 0,
            }),
            ..ty(pb::FdTypes::Timerfd, 12)
        },
        pb::FileEntry {
            isk: Some(pb::InetSkEntry {
                id: 13,
                ino: 77001,
                family: 2,
                r#type: 1,
                proto: 6,
                state: 10,
                src_port: 8080,
                dst_port: 0,
                flags: 0o2,
                backlog: 128,
                src_addr: vec![0],
                dst_addr: vec![0],
                fown: fown(),
                opts: sk_opts(),
                v6only: None,
                ip_opts: Some(pb::IpOptsEntry {
                    freebind: Some(false),
                    raw: None,
                    pktinfo: None,
                    tos: Some(0x10),
                    ttl: None,
                }),
                ifname: None,
                ns_id: Some(3),
                shutdown: None,
                tcp_opts: Some(pb::TcpOptsEntry {
                    cork: Some(false),
                    nodelay: Some(true),
                    keepcnt: Some(9),
                    keepidle: Some(7200),
                    keepintvl: Some(75),
                }),
            }),
            ..ty(pb::FdTypes::Inetsk, 13)
        },
        pb::FileEntry {
            // An established IPv6 connection ::1:40312 -> ::1:22, network byte order words.
            isk: Some(pb::InetSkEntry {
                id: 26,
                ino: 77002,
                family: 10,
                r#type: 1,
                proto: 6,
                state: 1,
                src_port: 40312,
                dst_port: 22,
                flags: 0o2,
                backlog: 0,
                src_addr: vec![0, 0, 0, u32::from_be(1)],
                dst_addr: vec![0, 0, 0, u32::from_be(1)],
                fown: fown(),
                opts: sk_opts(),
                v6only: Some(false),
                ip_opts: None,
                ifname: Some("lo".into()),
                ns_id: Some(3),
                shutdown: Some(pb::SkShutdown::Write as i32),
                tcp_opts: None,
            }),
            ..ty(pb::FdTypes::Inetsk, 26)
        },
        pb::FileEntry {
            usk: Some(pb::UnixSkEntry {
                id: 14,
                ino: 77003,
                r#type: 1,
                state: 1,
                flags: 0o2,
                uflags: 0,
                backlog: 0,
                peer: 77004,
                fown: fown(),
                opts: sk_opts(),
                // An abstract name: NUL first, and bytes quoted-printable must escape.
                name: b"\0criu=rs\x01\xffsock".to_vec(),
                shutdown: Some(pb::SkShutdown::None as i32),
                file_perms: Some(pb::FilePermsEntry {
                    mode: 0o140777,
                    uid: 1000,
                    gid: 1000,
                }),
                name_dir: None,
                deleted: Some(false),
                ns_id: Some(3),
                mnt_id: Some(25),
            }),
            ..ty(pb::FdTypes::Unixsk, 14)
        },
        pb::FileEntry {
            psk: Some(pb::PacketSockEntry {
                id: 15,
                r#type: 3,
                protocol: 0x0300,
                flags: 0o2,
                ifindex: 1,
                fown: fown(),
                opts: sk_opts(),
                version: 2,
                reserve: 0,
                aux_data: false,
                orig_dev: false,
                vnet_hdr: false,
                loss: false,
                timestamp: 0,
                copy_thresh: 0,
                mclist: vec![pb::PacketMclist {
                    index: 1,
                    r#type: 1,
                    addr: vec![0x01, 0x00, 0x5e, 0x00, 0x00, 0x01],
                }],
                fanout: None,
                rx_ring: Some(pb::PacketRing {
                    block_size: 4096,
                    block_nr: 64,
                    frame_size: 2048,
                    frame_nr: 128,
                    retire_tmo: 0,
                    sizeof_priv: 0,
                    features: 0,
                }),
                tx_ring: None,
                ns_id: Some(3),
            }),
            ..ty(pb::FdTypes::Packetsk, 15)
        },
        pb::FileEntry {
            nlsk: Some(pb::NetlinkSkEntry {
                id: 16,
                ino: 77005,
                protocol: 0,
                state: 0,
                flags: 0o2,
                portid: 100,
                groups: vec![0x11],
                dst_portid: 0,
                dst_group: 0,
                fown: fown(),
                opts: sk_opts(),
                ns_id: Some(3),
            }),
            ..ty(pb::FdTypes::Netlinksk, 16)
        },
        pb::FileEntry {
            nsf: Some(pb::NsFileEntry {
                id: 17,
                ns_id: 3,
                ns_cflag: 0x4000_0000,
                flags: 0o100000,
            }),
            ..ty(pb::FdTypes::Ns, 17)
        },
        pb::FileEntry {
            memfd: Some(pb::MemfdFileEntry {
                id: 18,
                flags: 0o100002,
                pos: 100,
                fown: fown(),
                inode_id: 1,
            }),
            ..ty(pb::FdTypes::Memfd, 18)
        },
        pb::FileEntry {
            tunf: Some(pb::TunfileEntry {
                id: 19,
                netdev: Some("tun0".into()),
                detached: Some(false),
                ns_id: Some(3),
            }),
            ..ty(pb::FdTypes::Tunf, 19)
        },
        pb::FileEntry {
            ext: Some(pb::ExtFileEntry {
                id: 20,
                fown: fown(),
            }),
            ..ty(pb::FdTypes::Ext, 20)
        },
        pb::FileEntry {
            fifo: Some(pb::FifoEntry {
                id: 21,
                pipe_id: 99,
                regf_id: Some(22),
            }),
            ..ty(pb::FdTypes::Fifo, 21)
        },
        reg(22, "/tmp/fifo", 0o100000, 0o10644),
        pb::FileEntry {
            ify: Some(pb::InotifyFileEntry {
                id: 23,
                flags: 0o4000,
                fown: fown(),
                wd: vec![pb::InotifyWdEntry {
                    id: 23,
                    i_ino: 1_234_567,
                    mask: 0x0000_0fff,
                    ignored_mask: 0,
                    s_dev: 8 << 20 | 1,
                    wd: 1,
                    f_handle: fh(),
                }],
            }),
            ..ty(pb::FdTypes::Inotify, 23)
        },
        pb::FileEntry {
            ffy: Some(pb::FanotifyFileEntry {
                id: 24,
                flags: 0o2,
                fown: fown(),
                faflags: 0x10,
                evflags: 0o100000,
                mark: vec![
                    pb::FanotifyMarkEntry {
                        id: 24,
                        r#type: pb::MarkType::Inode as i32,
                        mflags: 0,
                        mask: 0x20,
                        ignored_mask: 0,
                        s_dev: 8 << 20 | 1,
                        ie: Some(pb::FanotifyInodeMarkEntry {
                            i_ino: 1_234_567,
                            f_handle: fh(),
                        }),
                        me: None,
                    },
                    pb::FanotifyMarkEntry {
                        id: 24,
                        r#type: pb::MarkType::Mount as i32,
                        mflags: 0,
                        mask: 0x8,
                        ignored_mask: 0,
                        s_dev: 0,
                        ie: None,
                        me: Some(pb::FanotifyMountMarkEntry {
                            mnt_id: 25,
                            path: Some("/home".into()),
                        }),
                    },
                ],
            }),
            ..ty(pb::FdTypes::Fanotify, 24)
        },
        pb::FileEntry {
            bpf: Some(pb::BpfmapFileEntry {
                id: 25,
                flags: 0o2,
                pos: 0,
                fown: fown(),
                map_type: 1,
                key_size: 4,
                value_size: 8,
                map_id: 42,
                max_entries: 1024,
                map_flags: 0,
                memlock: 16384,
                frozen: false,
                map_name: "counters".into(),
                ifindex: 0,
                mnt_id: Some(-1),
                map_extra: Some(0),
            }),
            ..ty(pb::FdTypes::Bpfmap, 25)
        },
    ]
}

fn fdinfo() -> Vec<pb::FdinfoEntry> {
    let fd = |fd, id, t: pb::FdTypes, flags| pb::FdinfoEntry {
        id,
        flags,
        r#type: t as i32,
        fd,
        xattr_security_selinux: None,
    };
    vec![
        fd(0, 7, pb::FdTypes::Tty, 0),
        fd(1, 7, pb::FdTypes::Tty, 0),
        fd(2, 7, pb::FdTypes::Tty, 0),
        fd(3, 1, pb::FdTypes::Reg, 1),
        fd(4, 5, pb::FdTypes::Pipe, 1),
        fd(5, 6, pb::FdTypes::Pipe, 1),
        fd(6, 13, pb::FdTypes::Inetsk, 0),
        fd(7, 14, pb::FdTypes::Unixsk, 0),
        fd(255, 9, pb::FdTypes::Eventfd, 1),
    ]
}

fn termios(cc: u32) -> pb::TermiosEntry {
    pb::TermiosEntry {
        c_iflag: 0x6d02,
        c_oflag: 0x5,
        c_cflag: 0x4bf,
        c_lflag: 0x8a3b,
        c_line: 0,
        c_ispeed: 15,
        c_ospeed: 15,
        c_cc: (0..19).map(|i| cc * i).collect(),
    }
}

fn tty_info() -> pb::TtyInfoEntry {
    pb::TtyInfoEntry {
        id: 1,
        r#type: pb::TtyType::Pty as i32,
        locked: false,
        exclusive: false,
        packet_mode: false,
        sid: PID,
        pgrp: PID,
        rdev: 136 << 8 | 3,
        termios: Some(termios(3)),
        termios_locked: Some(termios(0)),
        winsize: Some(pb::WinsizeEntry {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }),
        pty: Some(pb::TtyPtyEntry { index: 3 }),
        dev: None,
        uid: Some(1000),
        gid: Some(5),
    }
}

// ---------------------------------------------------------------------------------------------
// Our images, decoded by crit

#[test]
fn inventory() {
    let (_t, dir) = tmpdir();
    let inv = pb::InventoryEntry {
        img_version: criu::images::IMG_VERSION,
        fdinfo_per_id: Some(true),
        root_ids: Some(ids()),
        ns_per_id: Some(true),
        root_cg_set: Some(1),
        lsmtype: Some(pb::Lsmtype::NoLsm as i32),
        dump_uptime: Some(123_456_789_000),
        pre_dump_mode: None,
        tcp_close: None,
        network_lock_method: Some(1),
        plugins_entry: Some(pb::PluginsEntry { plugins: vec![] }),
        dump_criu_run_id: Some("criu-rs-1-2".into()),
        allow_uprobes: None,
    };
    dir.write_one(Kind::Inventory, 0, &inv).unwrap();
    let unknown = check(
        &dir.file("inventory.img"),
        "INVENTORY",
        &[entry("inventory_entry", &inv)],
    );
    assert_eq!(
        unknown,
        names(&[
            "inventory_entry.plugins_entry",
            "inventory_entry.dump_criu_run_id"
        ])
    );
}

#[test]
fn pstree() {
    let (_t, dir) = tmpdir();
    let tree = [
        pb::PstreeEntry {
            pid: PID,
            ppid: 0,
            pgid: PID,
            sid: PID,
            threads: vec![PID, PID + 1],
        },
        pb::PstreeEntry {
            pid: PID + 2,
            ppid: PID,
            pgid: PID,
            sid: PID,
            threads: vec![PID + 2],
        },
    ];
    dir.write_all(Kind::Pstree, 0, &tree).unwrap();
    let entries: Vec<_> = tree.iter().map(|e| entry("pstree_entry", e)).collect();
    assert_eq!(
        check(&dir.file("pstree.img"), "PSTREE", &entries),
        no_unknown()
    );
}

#[test]
fn core_main_thread_and_other_thread() {
    let (_t, dir) = tmpdir();
    for tid in [PID, PID + 1] {
        dir.write_one(Kind::Core, tid, &core(tid)).unwrap();
    }
    let unknown = check(
        &dir.file("core-100.img"),
        "CORE",
        &[entry("core_entry", &core(PID))],
    );
    assert_eq!(
        unknown,
        names(&[
            "creds_entry.cap_amb",
            "creds_entry.no_new_privs",
            "task_core_entry.membarrier_registration_mask",
            "thread_core_entry.cg_set",
            "user_x86_fpregs_entry.xsave_area",
        ])
    );
    let img = crit_decode(&dir.file("core-101.img"), false);
    assert!(img["entries"][0].get("tc").is_none());
    check(
        &dir.file("core-101.img"),
        "CORE",
        &[entry("core_entry", &core(PID + 1))],
    );
}

#[test]
fn ids_fs_and_creds() {
    let (_t, dir) = tmpdir();
    dir.write_one(Kind::Ids, PID, &ids()).unwrap();
    let fs = pb::FsEntry {
        cwd_id: 2,
        root_id: 4,
        umask: Some(0o022),
    };
    dir.write_one(Kind::Fs, PID, &fs).unwrap();
    // Old images kept creds in their own file.
    dir.write_one(Kind::Creds, PID, &creds()).unwrap();
    assert_eq!(
        check(
            &dir.file("ids-100.img"),
            "IDS",
            &[entry("task_kobj_ids_entry", &ids())]
        ),
        no_unknown()
    );
    assert_eq!(
        check(&dir.file("fs-100.img"), "FS", &[entry("fs_entry", &fs)]),
        no_unknown()
    );
    let unknown = check(
        &dir.file("creds-100.img"),
        "CREDS",
        &[entry("creds_entry", &creds())],
    );
    assert_eq!(
        unknown,
        names(&["creds_entry.cap_amb", "creds_entry.no_new_privs"])
    );
}

#[test]
fn mm_with_vmas() {
    let (_t, dir) = tmpdir();
    dir.write_one(Kind::Mm, PID, &mm()).unwrap();
    assert_eq!(
        check(&dir.file("mm-100.img"), "MM", &[entry("mm_entry", &mm())]),
        no_unknown()
    );
}

#[test]
fn pagemap_and_pages() {
    let (_t, dir) = tmpdir();
    let head = pb::PagemapHead { pages_id: 1 };
    let mut w = dir.create(Kind::Pagemap, PID).unwrap();
    w.write(&head).unwrap();
    for e in pagemap_entries() {
        w.write(&e).unwrap();
    }
    w.finish().unwrap();
    let mut entries = vec![entry("pagemap_head", &head)];
    entries.extend(pagemap_entries().iter().map(|e| entry("pagemap_entry", e)));
    let unknown = check(&dir.file("pagemap-100.img"), "PAGEMAP", &entries);
    assert_eq!(unknown, names(&["pagemap_entry.nr_pages"]));
    // crit knows field 2 as nr_pages: that is what it shows.
    let img = crit_decode(&dir.file("pagemap-100.img"), false);
    assert_eq!(img["entries"][2]["nr_pages"], 3);
    // pages-N.img has no header: crit refuses it as raw data.
    std::fs::write(dir.file("pages-1.img"), vec![0xa5u8; 4096]).unwrap();
    let err = crit_fails(["decode", "-i", dir.file("pages-1.img").to_str().unwrap()]);
    assert!(err.contains("raw data"), "{err}");
}

#[test]
fn files_and_fdinfo() {
    let (_t, dir) = tmpdir();
    dir.write_all(Kind::Files, 0, &files()).unwrap();
    dir.write_all(Kind::Fdinfo, 1, &fdinfo()).unwrap();
    let entries: Vec<_> = files().iter().map(|e| entry("file_entry", e)).collect();
    let unknown = check(&dir.file("files.img"), "FILES", &entries);
    assert_eq!(
        unknown,
        names(&["inet_sk_entry.tcp_opts", "ip_opts_entry.tos"])
    );
    let entries: Vec<_> = fdinfo().iter().map(|e| entry("fdinfo_entry", e)).collect();
    assert_eq!(
        check(&dir.file("fdinfo-1.img"), "FDINFO", &entries),
        no_unknown()
    );
}

#[test]
fn tty_info_and_data() {
    let (_t, dir) = tmpdir();
    dir.write_one(Kind::TtyInfo, 0, &tty_info()).unwrap();
    let data = pb::TtyDataEntry {
        tty_id: 1,
        data: b"ls -l\n\x03".to_vec(),
    };
    dir.write_one(Kind::TtyData, 0, &data).unwrap();
    let tty_file = pb::TtyFileEntry {
        id: 7,
        tty_info_id: 1,
        flags: 0o100002,
        fown: fown(),
        regf_id: Some(8),
    };
    dir.write_one(Kind::TtyFiles, 0, &tty_file).unwrap();
    assert_eq!(
        check(
            &dir.file("tty-info.img"),
            "TTY_INFO",
            &[entry("tty_info_entry", &tty_info())]
        ),
        no_unknown()
    );
    assert_eq!(
        check(
            &dir.file("tty-data.img"),
            "TTY_DATA",
            &[entry("tty_data_entry", &data)]
        ),
        no_unknown()
    );
    assert_eq!(
        check(
            &dir.file("tty.img"),
            "TTY_FILES",
            &[entry("tty_file_entry", &tty_file)]
        ),
        no_unknown()
    );
}

#[test]
fn timens_seccomp_stats() {
    let (_t, dir) = tmpdir();
    let timens = pb::TimensEntry {
        monotonic: pb::Timespec {
            tv_sec: 86_400 * 3,
            tv_nsec: 123_456_789,
        },
        boottime: pb::Timespec {
            tv_sec: 86_400 * 3 + 17,
            tv_nsec: 999_999_999,
        },
    };
    dir.write_one(Kind::Timens, 0, &timens).unwrap();
    // "ld [4]; ret ALLOW" and a second filter installed on top of it.
    let insn = |code: u16, k: u32| [&code.to_ne_bytes()[..], &[0, 0], &k.to_ne_bytes()].concat();
    let seccomp = pb::SeccompEntry {
        seccomp_filters: vec![
            pb::SeccompFilter {
                filter: [insn(0x20, 4), insn(0x06, 0x7fff_0000)].concat(),
                prev: None,
                flags: Some(0),
            },
            pb::SeccompFilter {
                filter: insn(0x06, 0x7fff_0000),
                prev: Some(0),
                flags: Some(1),
            },
        ],
    };
    dir.write_one(Kind::Seccomp, 0, &seccomp).unwrap();
    let stats = pb::StatsEntry {
        dump: Some(pb::DumpStatsEntry {
            freezing_time: 1500,
            frozen_time: 25_000,
            memdump_time: 9000,
            memwrite_time: 7000,
            pages_scanned: 1024,
            pages_skipped_parent: 2,
            pages_written: 10,
            irmap_resolve: None,
            pages_lazy: 4,
            page_pipes: Some(1),
            page_pipe_bufs: Some(3),
            shpages_scanned: Some(2),
            shpages_skipped_parent: Some(0),
            shpages_written: Some(2),
        }),
        restore: None,
    };
    dir.write_one(Kind::Stats, "dump", &stats).unwrap();
    let raw = std::fs::read(dir.file("stats-dump")).unwrap();
    assert_eq!(raw[..4], criu::images::IMG_SERVICE_MAGIC.to_ne_bytes());
    assert_eq!(
        check(
            &dir.file("timens-0.img"),
            "TIMENS",
            &[entry("timens_entry", &timens)]
        ),
        no_unknown()
    );
    assert_eq!(
        check(
            &dir.file("seccomp.img"),
            "SECCOMP",
            &[entry("seccomp_entry", &seccomp)]
        ),
        no_unknown()
    );
    assert_eq!(
        check(
            &dir.file("stats-dump"),
            "STATS",
            &[entry("stats_entry", &stats)]
        ),
        no_unknown()
    );
}

/// Images whose entries carry raw bytes after them.
#[test]
fn entries_with_extra_bytes() {
    let (_t, dir) = tmpdir();
    let small = b"hello world".to_vec();
    // Long enough for crit's base64 to wrap lines.
    let big: Vec<u8> = (0..300u32).map(|i| (i * 13 % 256) as u8).collect();
    let pipes = [
        pb::PipeDataEntry {
            pipe_id: 123456,
            bytes: small.len() as u32,
            size: Some(65536),
            packets: Vec::new(),
        },
        pb::PipeDataEntry {
            pipe_id: 123457,
            bytes: big.len() as u32,
            size: None,
            packets: Vec::new(),
        },
    ];
    for kind in [Kind::PipesData, Kind::FifoData] {
        let mut w = dir.create(kind, 0).unwrap();
        w.write(&pipes[0]).unwrap();
        w.write_raw(&small).unwrap();
        w.write(&pipes[1]).unwrap();
        w.write_raw(&big).unwrap();
        w.finish().unwrap();
    }
    let entries = || {
        vec![
            entry("pipe_data_entry", &pipes[0]).extra(b64(&small)),
            entry("pipe_data_entry", &pipes[1]).extra(b64(&big)),
        ]
    };
    assert_eq!(
        check(&dir.file("pipes-data.img"), "PIPES_DATA", &entries()),
        no_unknown()
    );
    assert_eq!(
        check(&dir.file("fifo-data.img"), "FIFO_DATA", &entries()),
        no_unknown()
    );

    let pkt = pb::SkPacketEntry {
        id_for: 16,
        length: 5,
        scm: vec![pb::ScmEntry {
            r#type: 1,
            rights: vec![5, 6],
        }],
    };
    let mut w = dir.create(Kind::SkQueues, 0).unwrap();
    w.write(&pkt).unwrap();
    w.write_raw(b"\x00\x01dgm").unwrap();
    w.finish().unwrap();
    let e = [entry("sk_packet_entry", &pkt).extra(b64(b"\x00\x01dgm"))];
    assert_eq!(
        check(&dir.file("sk-queues.img"), "SK_QUEUES", &e),
        no_unknown()
    );

    let tcp = pb::TcpStreamEntry {
        inq_len: 4,
        inq_seq: 0x1234_5678,
        outq_len: 6,
        outq_seq: 0x9abc_def0,
        opt_mask: 0x7,
        snd_wscale: 7,
        mss_clamp: 65483,
        rcv_wscale: Some(7),
        timestamp: Some(0x0102_0304),
        cork: None,
        nodelay: None,
        unsq_len: Some(2),
        snd_wl1: Some(0x1234_5670),
        snd_wnd: Some(65536),
        max_window: Some(65536),
        rcv_wnd: Some(65483),
        rcv_wup: Some(0x1234_5678),
    };
    let ino = 77002u32;
    let mut w = dir.create(Kind::TcpStream, criu::images::Hex(ino)).unwrap();
    w.write(&tcp).unwrap();
    w.write_raw(b"recv").unwrap();
    w.write_raw(b"unsent").unwrap();
    w.finish().unwrap();
    let extra = serde_json::json!({"inq": b64(b"recv"), "outq": b64(b"unsent")});
    let e = [entry("tcp_stream_entry", &tcp).extra(extra)];
    assert_eq!(
        check(&dir.file("tcp-stream-12cca.img"), "TCP_STREAM", &e),
        no_unknown()
    );

    // A ghost file kept in chunks: each chunk entry is followed by its data.
    let ghost = pb::GhostFileEntry {
        uid: 1000,
        gid: 1000,
        mode: 0o100600,
        dev: Some(8 << 20 | 1),
        ino: Some(1_234_999),
        rdev: None,
        atim: Some(pb::Timeval {
            tv_sec: 1_700_000_000,
            tv_usec: 1,
        }),
        mtim: Some(pb::Timeval {
            tv_sec: 1_700_000_001,
            tv_usec: 2,
        }),
        chunks: Some(true),
        size: Some(12288),
        symlnk_target: None,
    };
    let chunks = [
        pb::GhostChunkEntry { len: 5, off: 0 },
        pb::GhostChunkEntry { len: 3, off: 8192 },
    ];
    let mut w = dir
        .create(Kind::GhostFile, criu::images::Hex(0x2au32))
        .unwrap();
    w.write(&ghost).unwrap();
    w.write(&chunks[0]).unwrap();
    w.write_raw(b"first").unwrap();
    w.write(&chunks[1]).unwrap();
    w.write_raw(b"end").unwrap();
    w.finish().unwrap();
    let e = [
        entry("ghost_file_entry", &ghost),
        entry("ghost_chunk_entry", &chunks[0]).extra(b64(b"first")),
        entry("ghost_chunk_entry", &chunks[1]).extra(b64(b"end")),
    ];
    assert_eq!(
        check(&dir.file("ghost-file-2a.img"), "GHOST_FILE", &e),
        no_unknown()
    );
}

/// The small per-object images.
#[test]
fn other_images() {
    let (_t, dir) = tmpdir();
    let remaps = [
        pb::RemapFilePathEntry {
            orig_id: 1,
            remap_id: 0x2a,
            remap_type: Some(pb::RemapType::Ghost as i32),
        },
        pb::RemapFilePathEntry {
            orig_id: 3,
            remap_id: 30,
            remap_type: Some(pb::RemapType::Linked as i32),
        },
    ];
    dir.write_all(Kind::RemapFpath, 0, &remaps).unwrap();
    let locks = [pb::FileLockEntry {
        flag: 1,
        r#type: 1,
        pid: PID as i32,
        fd: 3,
        start: 0,
        len: 0,
    }];
    dir.write_all(Kind::FileLocks, 0, &locks).unwrap();
    let memfd = pb::MemfdInodeEntry {
        name: "jit-cache".into(),
        uid: 1000,
        gid: 1000,
        size: 8192,
        shmid: 5001,
        seals: 0x1,
        inode_id: 1,
        hugetlb_flag: None,
        mode: Some(0o100777),
    };
    dir.write_one(Kind::MemfdInode, 0, &memfd).unwrap();
    let uts = pb::UtsnsEntry {
        nodename: "box".into(),
        domainname: "(none)".into(),
    };
    dir.write_one(Kind::Utsns, 5, &uts).unwrap();
    let userns = pb::UsernsEntry {
        uid_map: vec![pb::UidGidExtent {
            first: 0,
            lower_first: 100_000,
            count: 65536,
        }],
        gid_map: vec![pb::UidGidExtent {
            first: 0,
            lower_first: 100_000,
            count: 65536,
        }],
    };
    dir.write_one(Kind::Userns, 7, &userns).unwrap();
    let pidns = pb::PidnsEntry {
        ext_key: Some("pidns-ext".into()),
    };
    dir.write_one(Kind::Pidns, 2, &pidns).unwrap();
    let cpu = pb::CpuinfoEntry {
        x86_entry: vec![pb::CpuinfoX86Entry {
            vendor_id: pb::cpuinfo_x86_entry::Vendor::Intel as i32,
            cpu_family: 6,
            model: 143,
            stepping: 8,
            capability_ver: 2,
            capability: (0..21).map(|i| 0x1000_0001u32.rotate_left(i)).collect(),
            model_id: Some("Intel(R) Xeon(R) Platinum 8480+".into()),
            xfeatures_mask: Some(0x602e7),
            xsave_size: Some(11008),
            xsave_size_max: Some(11008),
        }],
        ppc64_entry: vec![],
        s390_entry: vec![],
    };
    dir.write_one(Kind::Cpuinfo, 0, &cpu).unwrap();
    let irmap = pb::IrmapCacheEntry {
        dev: 0x801,
        inode: 1_234_567,
        path: "/home/user/watched".into(),
    };
    dir.write_one(Kind::IrmapCache, 0, &irmap).unwrap();
    let bpf = pb::BpfmapDataEntry {
        map_id: 42,
        keys_bytes: 8,
        values_bytes: 16,
        count: 2,
    };
    // Followed by the keys, then the values.
    let kv: Vec<u8> = (0..24).collect();
    let mut w = dir.create(Kind::BpfmapData, 0).unwrap();
    w.write(&bpf).unwrap();
    w.write_raw(&kv).unwrap();
    w.finish().unwrap();

    let many = |name, v: &[_]| -> Vec<Entry> { v.iter().map(|e| entry(name, e)).collect() };
    assert_eq!(
        check(
            &dir.file("remap-fpath.img"),
            "REMAP_FPATH",
            &many("remap_file_path_entry", &remaps)
        ),
        no_unknown()
    );
    assert_eq!(
        check(
            &dir.file("filelocks.img"),
            "FILE_LOCKS",
            &[entry("file_lock_entry", &locks[0])]
        ),
        no_unknown()
    );
    assert_eq!(
        check(
            &dir.file("memfd.img"),
            "MEMFD_INODE",
            &[entry("memfd_inode_entry", &memfd)]
        ),
        names(&["memfd_inode_entry.mode"])
    );
    assert_eq!(
        check(
            &dir.file("utsns-5.img"),
            "UTSNS",
            &[entry("utsns_entry", &uts)]
        ),
        no_unknown()
    );
    assert_eq!(
        check(
            &dir.file("userns-7.img"),
            "USERNS",
            &[entry("userns_entry", &userns)]
        ),
        no_unknown()
    );
    assert_eq!(
        check(
            &dir.file("pidns-2.img"),
            "PIDNS",
            &[entry("pidns_entry", &pidns)]
        ),
        no_unknown()
    );
    assert_eq!(
        check(
            &dir.file("cpuinfo.img"),
            "CPUINFO",
            &[entry("cpuinfo_entry", &cpu)]
        ),
        no_unknown()
    );
    assert_eq!(
        check(
            &dir.file("irmap-cache"),
            "IRMAP_CACHE",
            &[entry("irmap_cache_entry", &irmap)]
        ),
        no_unknown()
    );
    let e = [entry("bpfmap_data_entry", &bpf).extra(b64(&kv))];
    assert_eq!(
        check(&dir.file("bpfmap-data.img"), "BPFMAP_DATA", &e),
        no_unknown()
    );
}

/// Every image kind's magic is the one crit knows under CRIU's name for it.
#[test]
fn kinds_match_crit_magics() {
    let (_t, dir) = tmpdir();
    for &kind in Kind::ALL {
        let name = match kind {
            Kind::Inventory => "INVENTORY",
            Kind::Pstree => "PSTREE",
            Kind::Core => "CORE",
            Kind::Ids => "IDS",
            Kind::Mm => "MM",
            Kind::Pagemap | Kind::ShmemPagemap | Kind::SentPagemap => "PAGEMAP",
            Kind::Fdinfo => "FDINFO",
            Kind::Files => "FILES",
            Kind::Fs => "FS",
            Kind::Creds => "CREDS",
            Kind::TtyInfo => "TTY_INFO",
            Kind::TtyFiles => "TTY_FILES",
            Kind::TtyData => "TTY_DATA",
            Kind::Timens => "TIMENS",
            Kind::Seccomp => "SECCOMP",
            Kind::Stats => "STATS",
            Kind::PipesData => "PIPES_DATA",
            Kind::FifoData => "FIFO_DATA",
            Kind::SkQueues => "SK_QUEUES",
            Kind::UnixSk => "UNIXSK",
            Kind::InetSk => "INETSK",
            Kind::TcpStream => "TCP_STREAM",
            Kind::EventfdFile => "EVENTFD_FILE",
            Kind::EventpollFile => "EVENTPOLL_FILE",
            Kind::EventpollTfd => "EVENTPOLL_TFD",
            Kind::Signalfd => "SIGNALFD",
            Kind::Timerfd => "TIMERFD",
            Kind::InotifyFile => "INOTIFY_FILE",
            Kind::InotifyWd => "INOTIFY_WD",
            Kind::FanotifyFile => "FANOTIFY_FILE",
            Kind::FanotifyMark => "FANOTIFY_MARK",
            Kind::GhostFile => continue, // needs an entry: checked above
            Kind::RemapFpath => "REMAP_FPATH",
            Kind::FileLocks => "FILE_LOCKS",
            Kind::MemfdInode => "MEMFD_INODE",
            Kind::Pidfd => continue, // newer than crit 3.17
            Kind::Mnts => "MNTS",
            Kind::Netns => "NETNS",
            Kind::Utsns => "UTSNS",
            Kind::Pidns => "PIDNS",
            Kind::Userns => "USERNS",
            Kind::Cgroup => "CGROUP",
            Kind::NsFiles => "NS_FILES",
            Kind::Pipes => "PIPES",
            Kind::Fifo => "FIFO",
            Kind::Tunfile => "TUNFILE",
            Kind::BpfmapFile => "BPFMAP_FILE",
            Kind::BpfmapData => "BPFMAP_DATA",
            Kind::Cpuinfo => "CPUINFO",
            Kind::IrmapCache => "IRMAP_CACHE",
            Kind::RegFiles => "REG_FILES",
            Kind::ExtFiles => "EXT_FILES",
            Kind::PacketSk => "PACKETSK",
            Kind::NetlinkSk => "NETLINK_SK",
            Kind::Vmas => "VMAS",
            Kind::Sigacts => "SIGACT",
            Kind::Itimers => "ITIMERS",
            Kind::PosixTimers => "POSIX_TIMERS",
            Kind::Rlimit => "RLIMIT",
            Kind::SignalShared | Kind::SignalPrivate => "SIGNAL",
        };
        dir.create(kind, 9).unwrap().finish().unwrap();
        let file = dir.file(&kind.file_name(9));
        if name == "SIGNAL" {
            // crit knows the magic but has no decoder for it: its complaint names the magic.
            let err = crit_fails(["decode", "-i", file.to_str().unwrap()]);
            assert!(
                err.contains("No handler found for image with magic SIGNAL"),
                "{err}"
            );
            continue;
        }
        let img = crit_decode(&file, false);
        assert_eq!(img["magic"], name, "{kind:?}");
        assert_eq!(img["entries"], serde_json::json!([]), "{kind:?}");
    }
}

/// The comparison above must notice a difference anywhere: a number deep inside, bytes, an enum,
/// a missing entry.
#[test]
fn comparison_catches_differences() {
    let (_t, dir) = tmpdir();
    dir.write_one(Kind::Core, PID, &core(PID)).unwrap();
    let file = dir.file("core-100.img");
    let fails = |want: pb::CoreEntry, what: &str| {
        let r = std::panic::catch_unwind(|| check(&file, "CORE", &[entry("core_entry", &want)]));
        let msg = match r {
            Ok(_) => panic!("a wrong {what} went unnoticed"),
            Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
        };
        assert!(msg.contains(what), "{what}: {msg}");
    };
    let mut c = core(PID);
    c.thread_info
        .as_mut()
        .unwrap()
        .fpregs
        .xsave
        .as_mut()
        .unwrap()
        .hi16_zmm[127] ^= 1;
    fails(c, "core-100.img[0].thread_info.fpregs.xsave.hi16_zmm[127]");
    let mut c = core(PID);
    c.thread_core
        .as_mut()
        .unwrap()
        .signals_p
        .as_mut()
        .unwrap()
        .signals[0]
        .siginfo[127] = 1;
    fails(c, "thread_core.signals_p.signals[0].siginfo");
    let mut c = core(PID);
    c.thread_core.as_mut().unwrap().seccomp_mode = Some(pb::SeccompMode::Strict as i32);
    fails(c, "thread_core.seccomp_mode");
    let mut c = core(PID);
    c.tc.as_mut().unwrap().sigactions.pop();
    fails(c, "tc.sigactions: 61 items written");
    let mut c = core(PID);
    c.tc.as_mut().unwrap().child_subreaper = None;
    fails(
        c,
        "tc.child_subreaper: crit shows false that we did not write",
    );
}

// ---------------------------------------------------------------------------------------------
// crit --pretty: how crit prints some fields for people (and accepts them back)

#[test]
fn pretty_forms() {
    let (_t, dir) = tmpdir();
    dir.write_one(Kind::Core, PID, &core(PID)).unwrap();
    dir.write_one(Kind::Mm, PID, &mm()).unwrap();
    dir.write_all(Kind::Files, 0, &files()).unwrap();
    let mut w = dir.create(Kind::Pagemap, PID).unwrap();
    w.write(&pb::PagemapHead { pages_id: 1 }).unwrap();
    for e in pagemap_entries() {
        w.write(&e).unwrap();
    }
    w.finish().unwrap();

    let core = crit_decode(&dir.file("core-100.img"), true);
    let c = &core["entries"][0];
    // thread_info_x86.gpregs is marked hex as a whole: every register becomes a string.
    assert_eq!(c["thread_info"]["gpregs"]["ip"], "0x7f3a1c2e5a34");
    assert_eq!(c["thread_info"]["gpregs"]["ax"], "0xfffffffffffffdfc");
    assert_eq!(c["thread_info"]["gpregs"]["mode"], "NATIVE");
    assert_eq!(c["thread_info"]["clear_tid_addr"], "0x7f3a1c1f9a10");
    assert_eq!(c["thread_info"]["fpregs"]["mxcsr"], 0x1f80);
    assert_eq!(c["mtype"], "X86_64");
    // crit 3.17's names for task_state are off (it says Zombie for 3, which is stopped).
    assert_eq!(c["tc"]["task_state"], "Alive");
    assert_eq!(c["tc"]["blk_sigset"], "0x10000");
    assert_eq!(c["tc"]["sigactions"][8]["sigaction"], "0x555555555189");
    assert_eq!(c["tc"]["sigactions"][8]["flags"], "0x14000004");
    assert_eq!(c["tc"]["rlimits"]["rlimits"][0]["cur"], u64::MAX);
    assert_eq!(c["thread_core"]["seccomp_mode"], "filter");

    let mm = crit_decode(&dir.file("mm-100.img"), true);
    let m = &mm["entries"][0];
    assert_eq!(m["mm_start_brk"], "0x555555579000");
    assert_eq!(m["vmas"][1]["start"], "0x555555555000");
    assert_eq!(m["vmas"][1]["prot"], "PROT_READ | PROT_EXEC");
    assert_eq!(m["vmas"][1]["flags"], "MAP_PRIVATE");
    assert_eq!(
        m["vmas"][1]["status"],
        "VMA_AREA_REGULAR | VMA_FILE_PRIVATE"
    );
    assert_eq!(m["vmas"][1]["fdflags"], "0x8000");
    assert_eq!(
        m["vmas"][3]["status"],
        "VMA_AREA_REGULAR | VMA_AREA_HEAP | VMA_ANON_PRIVATE"
    );
    assert_eq!(m["vmas"][4]["madv"], "0x400");
    assert_eq!(
        m["vmas"][6]["flags"],
        "MAP_PRIVATE | MAP_ANON | MAP_GROWSDOWN"
    );
    assert_eq!(m["vmas"][6]["fd"], -1);

    let f = crit_decode(&dir.file("files.img"), true);
    let by_id = |id: u64| {
        f["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(
        by_id(1)["reg"]["flags"],
        "O_WRONLY | O_APPEND | O_LARGEFILE"
    );
    assert_eq!(by_id(6)["pipe"]["flags"], "0x801");
    let isk = by_id(13)["isk"].clone();
    assert_eq!(
        (&isk["family"], &isk["type"], &isk["proto"]),
        (&"INET".into(), &"STREAM".into(), &"TCP".into())
    );
    assert_eq!(isk["state"], "LISTEN");
    assert_eq!(isk["src_addr"], serde_json::json!(["0.0.0.0"]));
    assert_eq!(by_id(26)["isk"]["dst_addr"], serde_json::json!(["::1"]));
    assert_eq!(by_id(23)["ify"]["wd"][0]["s_dev"], "8:1");
    assert_eq!(by_id(23)["ify"]["wd"][0]["mask"], "0xfff");

    let pm = crit_decode(&dir.file("pagemap-100.img"), true);
    assert_eq!(pm["entries"][1]["vaddr"], "0x555555556000");
    assert_eq!(pm["entries"][1]["flags"], "PE_PRESENT");
    assert_eq!(pm["entries"][4]["flags"], "PE_LAZY | PE_PRESENT");
    // `crit show` is decode --pretty.
    let shown: Json = serde_json::from_str(&crit([
        "show",
        dir.file("pagemap-100.img").to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(shown, pm);
}

// ---------------------------------------------------------------------------------------------
// crit's JSON, changed and encoded by crit, read by us

#[test]
fn crit_encoded_core_reads_back() {
    let (_t, dir) = tmpdir();
    dir.write_one(Kind::Core, PID, &core(PID)).unwrap();
    let mut json = crit_decode(&dir.file("core-100.img"), false);
    let c = &mut json["entries"][0];
    c["thread_info"]["gpregs"]["ip"] = 0x40_1000.into();
    c["thread_info"]["gpregs"]["r8"] = 7.into();
    c["thread_info"]["fpregs"]["xsave"]["ymmh_space"][0] = 0xdead.into();
    c["thread_info"]["tls"][0]["base_addr"] = 0x1000.into();
    c["thread_info"]["tls"][0]["seg_not_present"] = false.into();
    c["tc"]["comm"] = "renamed".into();
    c["tc"]["sigactions"][8]["sigaction"] = 0x1234.into();
    c["tc"]["rlimits"]["rlimits"][7]["cur"] = 4096.into();
    c["tc"]["oom_score_adj"] = (-1000).into();
    c["thread_core"]["sched_nice"] = (-20).into();
    c["thread_core"]["creds"]["uid"] = 0.into();
    c["thread_core"]["seccomp_mode"] = "strict".into();
    c["thread_core"]["signals_p"]["signals"][0]["siginfo"] = b64(&[0x11; 128]);
    crit_encode(&json, &dir.file("core-200.img"));

    let got: pb::CoreEntry = dir.read_one(Kind::Core, 200).unwrap();
    let mut want = core(PID);
    let ti = want.thread_info.as_mut().unwrap();
    ti.gpregs.ip = 0x40_1000;
    ti.gpregs.r8 = 7;
    ti.fpregs.xsave.as_mut().unwrap().ymmh_space[0] = 0xdead;
    ti.tls[0].base_addr = 0x1000;
    ti.tls[0].seg_not_present = false;
    // What crit 3.17 does not know is lost on its way through crit.
    ti.fpregs.xsave_area = None;
    let tc = want.tc.as_mut().unwrap();
    tc.comm = "renamed".into();
    tc.sigactions[8].sigaction = 0x1234;
    tc.rlimits.as_mut().unwrap().rlimits[7].cur = 4096;
    tc.oom_score_adj = Some(-1000);
    tc.membarrier_registration_mask = None;
    let th = want.thread_core.as_mut().unwrap();
    th.sched_nice = Some(-20);
    th.seccomp_mode = Some(pb::SeccompMode::Strict as i32);
    th.signals_p.as_mut().unwrap().signals[0].siginfo = vec![0x11; 128];
    th.cg_set = None;
    let cr = th.creds.as_mut().unwrap();
    cr.uid = 0;
    cr.no_new_privs = None;
    cr.cap_amb = vec![];
    assert_eq!(got, want);
}

#[test]
fn crit_encoded_pretty_images_read_back() {
    let (_t, dir) = tmpdir();
    dir.write_one(Kind::Mm, PID, &mm()).unwrap();
    dir.write_all(Kind::Files, 0, &files()).unwrap();

    // Hex strings and flag names go back to numbers.
    let mut json = crit_decode(&dir.file("mm-100.img"), true);
    let m = &mut json["entries"][0];
    m["vmas"][3]["end"] = "0x5555555a0000".into();
    m["vmas"][3]["prot"] = "PROT_READ".into();
    m["mm_brk"] = "0x5555555a0000".into();
    crit_encode(&json, &dir.file("mm-200.img"));
    let got: pb::MmEntry = dir.read_one(Kind::Mm, 200).unwrap();
    let mut want = mm();
    want.vmas[3].end = 0x5555_555a_0000;
    want.vmas[3].prot = 1;
    want.mm_brk = 0x5555_555a_0000;
    assert_eq!(got, want);

    // Addresses, socket names by dictionary, and file flags by name.
    let mut json = crit_decode(&dir.file("files.img"), true);
    for e in json["entries"].as_array_mut().unwrap() {
        if e["id"] == 26 {
            e["isk"]["dst_addr"] = serde_json::json!(["2001:db8::2"]);
            e["isk"]["state"] = "CLOSE_WAIT".into();
        }
        if e["id"] == 1 {
            e["reg"]["flags"] = "O_RDWR | O_LARGEFILE".into();
            e["reg"]["name"] = "/home/user/other.log".into();
        }
    }
    crit_encode(&json, &dir.file("files-200.img"));
    let got: Vec<pb::FileEntry> =
        criu::images::ImageReader::open(dir.file("files-200.img"), Kind::Files)
            .unwrap()
            .collect_all()
            .unwrap();
    let mut want = files();
    for f in want.iter_mut() {
        if let Some(isk) = f.isk.as_mut() {
            isk.tcp_opts = None;
            if let Some(o) = isk.ip_opts.as_mut() {
                o.tos = None;
            }
            if f.id == 26 {
                isk.dst_addr = vec![u32::from_be(0x2001_0db8), 0, 0, u32::from_be(2)];
                isk.state = 8;
            }
        }
        if f.id == 1 {
            let r = f.reg.as_mut().unwrap();
            r.flags = 0o100002;
            r.name = "/home/user/other.log".into();
        }
    }
    assert_eq!(got, want);
}

#[test]
fn crit_encoded_pagemap_and_pipe_data_read_back() {
    let (_t, dir) = tmpdir();
    let mut w = dir.create(Kind::Pagemap, PID).unwrap();
    w.write(&pb::PagemapHead { pages_id: 1 }).unwrap();
    for e in pagemap_entries() {
        w.write(&e).unwrap();
    }
    w.finish().unwrap();
    let mut json = crit_decode(&dir.file("pagemap-100.img"), false);
    json["entries"][0]["pages_id"] = 7.into();
    json["entries"][2]["nr_pages"] = 9.into();
    crit_encode(&json, &dir.file("pagemap-200.img"));
    let mut r = dir.open(Kind::Pagemap, 200).unwrap();
    let head: pb::PagemapHead = r.read_entry().unwrap().unwrap();
    assert_eq!(head.pages_id, 7);
    let got: Vec<pb::PagemapEntry> = r.collect_all().unwrap();
    // crit keeps only the 32-bit count (field 2); the 64-bit nr_pages it does not know is lost.
    let want: Vec<_> = pagemap_entries()
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            e.nr_pages = None;
            if i == 1 {
                e.compat_nr_pages = 9;
            }
            e
        })
        .collect();
    assert_eq!(got, want);

    let mut w = dir.create(Kind::PipesData, 0).unwrap();
    w.write(&pb::PipeDataEntry {
        pipe_id: 5,
        bytes: 3,
        size: None,
        packets: Vec::new(),
    })
    .unwrap();
    w.write_raw(b"abc").unwrap();
    w.finish().unwrap();
    let mut json = crit_decode(&dir.file("pipes-data.img"), false);
    json["entries"][0]["bytes"] = 6.into();
    json["entries"][0]["extra"] = b64(b"abcdef");
    json["entries"][0]["size"] = 4096.into();
    crit_encode(&json, &dir.file("pipes-data-2.img"));
    let mut r =
        criu::images::ImageReader::open(dir.file("pipes-data-2.img"), Kind::PipesData).unwrap();
    let e: pb::PipeDataEntry = r.read_entry().unwrap().unwrap();
    assert_eq!((e.pipe_id, e.bytes, e.size), (5, 6, Some(4096)));
    assert_eq!(r.read_raw(6).unwrap(), b"abcdef");
    assert!(r.read_entry::<pb::PipeDataEntry>().unwrap().is_none());
}

// ---------------------------------------------------------------------------------------------
// crit x: crit's views over a whole images directory

fn write_tree(dir: &ImageDir) {
    let inv = pb::InventoryEntry {
        img_version: criu::images::IMG_VERSION,
        fdinfo_per_id: Some(true),
        root_ids: Some(ids()),
        ns_per_id: Some(true),
        lsmtype: Some(pb::Lsmtype::NoLsm as i32),
        ..Default::default()
    };
    dir.write_one(Kind::Inventory, 0, &inv).unwrap();
    let tree = pb::PstreeEntry {
        pid: PID,
        ppid: 0,
        pgid: PID,
        sid: PID,
        threads: vec![PID, PID + 1],
    };
    dir.write_one(Kind::Pstree, 0, &tree).unwrap();
    dir.write_one(Kind::Core, PID, &core(PID)).unwrap();
    dir.write_one(Kind::Core, PID + 1, &core(PID + 1)).unwrap();
    dir.write_one(Kind::Ids, PID, &ids()).unwrap();
    dir.write_one(Kind::Mm, PID, &mm()).unwrap();
    dir.write_one(
        Kind::Fs,
        PID,
        &pb::FsEntry {
            cwd_id: 2,
            root_id: 4,
            umask: Some(0o022),
        },
    )
    .unwrap();
    dir.write_all(Kind::Files, 0, &files()).unwrap();
    dir.write_all(Kind::Fdinfo, 1, &fdinfo()).unwrap();
    dir.write_one(Kind::TtyInfo, 0, &tty_info()).unwrap();
    let mut w = dir.create(Kind::Pagemap, PID).unwrap();
    w.write(&pb::PagemapHead { pages_id: 1 }).unwrap();
    let mut pages = Vec::new();
    for e in pagemap_entries() {
        w.write(&e).unwrap();
        if e.flags.unwrap() & criu::images::PE_PRESENT != 0 {
            pages.extend((0..e.nr_pages.unwrap() * 4096).map(|i| (i % 251) as u8));
        }
    }
    w.finish().unwrap();
    std::fs::write(dir.file(&criu::images::pages_file_name(1)), pages).unwrap();
}

#[test]
fn crit_explores_a_tree() {
    let (_t, dir) = tmpdir();
    write_tree(&dir);
    let d = dir.path().to_str().unwrap();

    let ps = crit(["x", d, "ps"]);
    let lines: Vec<_> = ps
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .collect();
    assert_eq!(
        lines,
        [
            vec!["PID", "PGID", "SID", "COMM"],
            vec!["100", "100", "100", "sleeper"]
        ]
    );

    let fds = crit(["x", d, "fds"]);
    let want = [
        "100",
        "0: TTY.7",
        "1: TTY.7",
        "2: TTY.7",
        "3: /home/user/data.log",
        "4: pipe[123456]",
        "5: pipe[123456]",
        "6: INETSK.13",
        // crit prints the name as it shows it in JSON: quoted-printable.
        "7: unix[77003 (77004) =00criu=3Drs=01=FFsock]",
        "255: EVENTFD.9",
        "cwd: /home/user",
        "root: /",
    ];
    let got: Vec<_> = fds.lines().map(str::trim).collect();
    assert_eq!(got, want, "{fds}");

    let mems = crit(["x", d, "mems"]);
    let got: Vec<_> = mems
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let want = [
        "100",
        "exe /usr/bin/sleeper",
        "555555554000-555555555000 r-- /usr/bin/sleeper",
        "555555555000-555555556000 r-x /usr/bin/sleeper + 0x1000",
        "555555556000-555555557000 rw- /usr/bin/sleeper + 0x2000",
        "555555579000-55555559a000 rw-",
        "7f3a1c000000-7f3a1c100000 rw-",
        "7f3a1c300000-7f3a1c302000 rw- shmem[1]",
        "7ffde2c00000-7ffde2c21000 rw- [stack]",
        "7ffde2d8c000-7ffde2d90000 r--",
        "7ffde2d90000-7ffde2d92000 r-x [vdso]",
        "ffffffffff600000-ffffffffff601000 --x [vsyscall] *",
    ];
    assert_eq!(got, want, "{mems}");

    // rss pairs pagemap runs with their VMAs; crit 3.17 counts pages with field 2.
    let rss = crit(["x", d, "rss"]);
    let got: Vec<_> = rss
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect();
    let want = [
        "100",
        "555555556000 / 1 555555556000 / 1 /usr/bin/sleeper",
        "555555579000 / 3 555555579000 / 33",
        "55555557e000 / 2 ~",
        "7f3a1c000000 / 4 7f3a1c000000 / 256",
        "7ffde2c1f000 / 2 7ffde2c00000 / 33",
    ];
    assert_eq!(got, want, "{rss}");
}
