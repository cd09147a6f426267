//! Damaged, foreign and locked database directories: opening them returns a typed error, never
//! a panic, a hang or a store that silently lost data.
//!
//! Each test writes a small store, closes it, damages a copy on disk and opens the copy again.
//! The damage truncates or overwrites the sled `db` file, replaces `conf`, or writes records
//! through a raw sled handle: records that do not decode, and records that decode but hold
//! values the broker never writes. Every open runs on its own thread with a deadline, so a panic
//! or a hang inside sled fails the test with a message instead of aborting or stalling the run.
//!
//! The lock tests hold the database open in this process or in a child process. The child is
//! this test binary run again with `--exact child_process` and `AQUEDUCT_LOCK_DIR` set; without
//! that variable `child_process` returns at once.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use aqueduct::{Broker, BrokerConfig, Durability, Error, Message, TopicConfig, FORMAT_VERSION};

const TOPIC: &str = "orders";
const PARTITIONS: u32 = 2;
const MESSAGES: u32 = 200;
const GROUP: &str = "billing";
const ACKED: usize = 50;

const META_TREE: &str = "__aqueduct.meta";
const LOG_TREE: &str = "__aqueduct.log";
const GROUPS_TREE: &str = "__aqueduct.groups";

/// Record kind bytes, from `docs/FORMAT.md`.
const FORMAT_KIND: u8 = 1;
const TOPIC_KIND: u8 = 2;
const CURSOR_KIND: u8 = 5;
const INDEX_KIND: u8 = 7;

const INDEX_TREE: &str = "__aqueduct.index";

/// Maximum time one open may take before the test reports a hang.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

const LOCK_DIR_VAR: &str = "AQUEDUCT_LOCK_DIR";
const READY_FILE: &str = "holder.ready";

/// Messages per partition and offset, as `peek` returns them.
type Contents = BTreeMap<(u32, u64), Vec<u8>>;

#[test]
fn child_process() {
    let Ok(dir) = std::env::var(LOCK_DIR_VAR) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let _broker = Broker::open(dir.join("db")).expect("child open");
    std::fs::write(dir.join(READY_FILE), b"ready").expect("write ready file");
    thread::sleep(Duration::from_secs(30));
    panic!("the parent did not kill the child holding the lock");
}

#[test]
fn truncated_db_is_corrupt() {
    let store = Store::create();
    let len = store.db_len();
    for cut in [0, 100, len / 2] {
        let copy = store.copy(&format!("cut-{cut}"));
        copy.truncate_db(cut);
        let outcome = open_bounded(&copy.path, &format!("db truncated to {cut} bytes"));
        assert_corrupt(&outcome, &format!("db truncated to {cut} of {len} bytes"));
    }
}

#[test]
fn overwritten_db_is_corrupt() {
    let store = Store::create();
    let len = store.db_len();
    for position in [0, len / 2] {
        let copy = store.copy(&format!("overwrite-{position}"));
        copy.overwrite_db(position, &[0xAB; 64]);
        let case = format!("64 bytes overwritten at {position} of {len}");
        let outcome = open_bounded(&copy.path, &case);
        assert_corrupt(&outcome, &case);
    }
}

#[test]
fn damaged_db_never_loses_data_silently() {
    let store = Store::create();
    let len = store.db_len();
    let mut cases = Vec::new();
    for position in (0..len).step_by(2048) {
        cases.push((
            format!("64 bytes overwritten at {position}"),
            position,
            false,
        ));
    }
    for cut in (0..len).step_by(8192) {
        cases.push((format!("db truncated to {cut} bytes"), cut, true));
    }
    for (case, position, truncate) in cases {
        let copy = store.copy("sweep");
        if truncate {
            copy.truncate_db(position);
        } else {
            copy.overwrite_db(position, &[0xAB; 64]);
        }
        match open_bounded(&copy.path, &case) {
            Ok(broker) => assert_eq!(
                contents(&broker),
                store.contents,
                "{case}: the store opened but its messages differ from what was written"
            ),
            Err(error) => assert!(
                matches!(error, Error::Corrupt { .. }),
                "{case}: expected Error::Corrupt, got {error:?}"
            ),
        }
        std::fs::remove_dir_all(&copy.path).expect("remove sweep copy");
    }
}

#[test]
fn missing_db_file_is_corrupt() {
    let store = Store::create();
    let copy = store.copy("no-db");
    std::fs::remove_file(copy.path.join("db")).expect("remove db file");
    let outcome = open_bounded(&copy.path, "db file removed");
    assert_corrupt(&outcome, "db file removed, conf kept");
}

#[test]
fn garbage_conf_is_corrupt() {
    let store = Store::create();
    let cases: [(&str, &[u8]); 2] = [
        ("bytes that are not UTF-8", &[0xFF; 40]),
        (
            "an unparsable segment size",
            b"segment_size: banana\nuse_compression: false\nversion: 0.34\n1234",
        ),
    ];
    for (case, bytes) in cases {
        let copy = store.copy("conf");
        std::fs::write(copy.path.join("conf"), bytes).expect("write conf");
        let outcome = open_bounded(&copy.path, case);
        assert_corrupt(&outcome, &format!("conf holding {case}"));
        std::fs::remove_dir_all(&copy.path).expect("remove copy");
    }
}

#[test]
fn empty_conf_is_rewritten() {
    let store = Store::create();
    let copy = store.copy("empty-conf");
    std::fs::write(copy.path.join("conf"), b"").expect("empty conf");
    let broker = open_bounded(&copy.path, "empty conf").expect("sled rewrites an empty conf");
    assert_eq!(
        contents(&broker),
        store.contents,
        "messages after sled rewrote an empty conf"
    );
}

#[test]
fn format_version_mismatch_is_incompatible() {
    let store = Store::create();
    let newer = FORMAT_VERSION + 1;
    let cases = [
        ("version field", vec![FORMAT_VERSION, FORMAT_KIND, newer]),
        ("version byte", vec![newer, FORMAT_KIND, newer]),
    ];
    for (case, record) in cases {
        let copy = store.copy("format");
        copy.put_raw(META_TREE, b"format", &record);
        let outcome = open_bounded(&copy.path, case);
        match outcome {
            Err(Error::IncompatibleFormat {
                found, supported, ..
            }) => {
                assert_eq!(found, u32::from(newer), "{case}: found version");
                assert_eq!(
                    supported,
                    u32::from(FORMAT_VERSION),
                    "{case}: supported version"
                );
            }
            other => panic!("{case}: expected Error::IncompatibleFormat, got {other:?}"),
        }
        std::fs::remove_dir_all(&copy.path).expect("remove copy");
    }
}

#[test]
fn undecodable_format_record_is_corrupt() {
    let store = Store::create();
    let cases = [
        ("no body", vec![FORMAT_VERSION, FORMAT_KIND]),
        ("topic kind byte", vec![FORMAT_VERSION, TOPIC_KIND, 1]),
        ("empty value", Vec::new()),
    ];
    for (case, record) in cases {
        let copy = store.copy("format");
        copy.put_raw(META_TREE, b"format", &record);
        let outcome = open_bounded(&copy.path, case);
        assert_corrupt(&outcome, &format!("format record with {case}"));
        std::fs::remove_dir_all(&copy.path).expect("remove copy");
    }
}

#[test]
fn undecodable_topic_record_is_corrupt() {
    let store = Store::create();
    let copy = store.copy("topic");
    let record = [FORMAT_VERSION, TOPIC_KIND, 0xFF, 0xFF, 0xFF];
    copy.put_raw(META_TREE, format!("topic/{TOPIC}").as_bytes(), &record);
    let outcome = open_bounded(&copy.path, "undecodable topic record");
    assert_corrupt(&outcome, "undecodable topic record");
}

#[test]
fn undecodable_block_is_corrupt() {
    let store = Store::create();
    let copy = store.copy("block");
    // Topic id 0, partition 0, base offset 0.
    copy.put_raw(LOG_TREE, &[0; 16], &[FORMAT_VERSION, 3, 0xFF, 0xFF]);
    let outcome = open_bounded(&copy.path, "undecodable block")
        .and_then(|broker| broker.peek(TOPIC, 0, 0, usize::MAX));
    assert!(
        matches!(outcome, Err(Error::Corrupt { tree: LOG_TREE, .. })),
        "reading an undecodable block must fail with Error::Corrupt in {LOG_TREE}, got \
         {outcome:?}"
    );
}

#[test]
fn undecodable_cursor_is_corrupt() {
    let store = Store::create();
    let copy = store.copy("cursor");
    // Topic id 0, partition 0, then the group name.
    let key = [&[0u8; 8][..], GROUP.as_bytes()].concat();
    copy.put_raw(GROUPS_TREE, &key, &[FORMAT_VERSION, 5, 0xFF]);
    let outcome = open_bounded(&copy.path, "undecodable cursor").and_then(|broker| {
        let mut consumer = broker.subscribe(TOPIC, GROUP)?;
        consumer.recv_timeout(Duration::from_secs(1)).map(drop)
    });
    assert!(
        matches!(
            outcome,
            Err(Error::Corrupt {
                tree: GROUPS_TREE,
                ..
            })
        ),
        "consuming with an undecodable cursor must fail with Error::Corrupt in {GROUPS_TREE}, \
         got {outcome:?}"
    );
}

#[test]
fn stored_topic_with_zero_partitions_is_corrupt() {
    let store = Store::create();
    let copy = store.copy("zero-partitions");
    // Topic id 0 with a configuration that `create_topic` rejects.
    let config = TopicConfig::default().partitions(0);
    let body = postcard::to_stdvec(&(0u32, TOPIC, config)).expect("encode topic record");
    let record = [&[FORMAT_VERSION, TOPIC_KIND][..], &body].concat();
    copy.put_raw(META_TREE, format!("topic/{TOPIC}").as_bytes(), &record);
    let outcome = open_bounded(&copy.path, "topic with zero partitions");
    assert!(
        matches!(
            outcome,
            Err(Error::Corrupt {
                tree: META_TREE,
                ..
            })
        ),
        "a stored topic with zero partitions must fail to open with Error::Corrupt in \
         {META_TREE}, got {outcome:?}"
    );
}

#[test]
fn stored_block_past_max_offset_is_corrupt() {
    let store = Store::create();
    let copy = store.copy("block-past-max-offset");
    // Topic id 0, partition 0, a base offset two below u64::MAX, and an index entry of five
    // messages, so the block would end past the largest offset.
    let key = [&[0u8; 8][..], &(u64::MAX - 2).to_be_bytes()].concat();
    let body = postcard::to_stdvec(&(5u32, 100u64, 0u64)).expect("encode index record");
    let record = [&[FORMAT_VERSION, INDEX_KIND][..], &body].concat();
    copy.put_raw(INDEX_TREE, &key, &record);
    let outcome = open_bounded(&copy.path, "block past the largest offset");
    assert!(
        matches!(
            outcome,
            Err(Error::Corrupt {
                tree: INDEX_TREE,
                ..
            })
        ),
        "a block ending past u64::MAX must fail to open with Error::Corrupt in {INDEX_TREE}, \
         got {outcome:?}"
    );
}

#[test]
fn stored_cursor_past_max_offset_is_corrupt() {
    let entries = vec![(5u64, 1u32, false)];
    let outcome = consume_with_cursor("cursor-past-max-offset", u64::MAX - 1, entries);
    assert!(
        matches!(
            outcome,
            Err(Error::Corrupt {
                tree: GROUPS_TREE,
                ..
            })
        ),
        "a cursor entry past u64::MAX must fail with Error::Corrupt in {GROUPS_TREE}, got \
         {outcome:?}"
    );
}

#[test]
fn stored_cursor_at_max_attempts_is_corrupt() {
    let entries = vec![(0u64, u32::MAX, false)];
    let outcome = consume_with_cursor("cursor-max-attempts", 0, entries);
    assert!(
        matches!(
            outcome,
            Err(Error::Corrupt {
                tree: GROUPS_TREE,
                ..
            })
        ),
        "a cursor entry with u32::MAX attempts must fail with Error::Corrupt in {GROUPS_TREE}, \
         got {outcome:?}"
    );
}

/// Replaces the group's cursor of partition 0 in a copy of a store with a record that decodes,
/// then opens the copy and receives once.
fn consume_with_cursor(
    name: &str,
    committed: u64,
    entries: Vec<(u64, u32, bool)>,
) -> aqueduct::Result<()> {
    let store = Store::create();
    let copy = store.copy(name);
    // Topic id 0, partition 0, then the group name.
    let key = [&[0u8; 8][..], GROUP.as_bytes()].concat();
    let body = postcard::to_stdvec(&(committed, entries)).expect("encode cursor record");
    let record = [&[FORMAT_VERSION, CURSOR_KIND][..], &body].concat();
    copy.put_raw(GROUPS_TREE, &key, &record);
    let broker = open_bounded(&copy.path, name)?;
    let mut consumer = broker.subscribe(TOPIC, GROUP)?;
    consumer.recv_timeout(Duration::from_secs(1)).map(drop)
}

#[test]
fn second_open_in_process_is_locked() {
    let store = Store::create();
    let first = open_bounded(&store.path, "first open").expect("first open");
    let second = open_bounded(&store.path, "second open");
    assert!(
        matches!(second, Err(Error::Locked { .. })),
        "a second open while the first broker is alive must fail with Error::Locked, got \
         {second:?}"
    );
    drop(first);
    let third = open_bounded(&store.path, "open after close");
    assert!(
        third.is_ok(),
        "open after the first broker was dropped failed: {third:?}"
    );
}

#[test]
fn open_held_by_child_is_locked() {
    let scratch = tempfile::tempdir().expect("tempdir");
    Broker::open(scratch.path().join("db")).expect("create store");
    let exe = test_binary();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(LOCK_DIR_VAR, scratch.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !scratch.path().join(READY_FILE).exists() {
        let exited = child.try_wait().expect("poll child");
        assert!(
            exited.is_none(),
            "child exited before it opened the store: {exited:?}"
        );
        assert!(
            Instant::now() < deadline,
            "child did not open the store within a minute"
        );
        thread::sleep(Duration::from_millis(5));
    }

    let open_while_held = open_bounded(&scratch.path().join("db"), "store held by a child");
    child.kill().expect("kill child");
    child.wait().expect("wait for child");
    assert!(
        matches!(open_while_held, Err(Error::Locked { .. })),
        "open while a child process holds the store must fail with Error::Locked, got {open_while_held:?}"
    );
    let after = open_bounded(&scratch.path().join("db"), "store after the child died");
    assert!(
        after.is_ok(),
        "open after the holding child was killed failed: {after:?}"
    );
}

#[test]
fn file_path_is_io_error() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let file = scratch.path().join("not-a-directory");
    std::fs::write(&file, b"plain file").expect("write file");
    let outcome = open_bounded(&file, "path is a file");
    assert!(
        matches!(outcome, Err(Error::Io { .. })),
        "opening a plain file as a database directory must fail with Error::Io, got {outcome:?}"
    );
}

/// A closed store in a temporary directory, with the messages it contains.
struct Store {
    _scratch: tempfile::TempDir,
    path: PathBuf,
    contents: Contents,
}

impl Store {
    /// Writes 200 messages over two partitions in Flushed mode, acks 50 in a group and closes
    /// the broker.
    fn create() -> Self {
        let scratch = tempfile::tempdir().expect("tempdir");
        let path = scratch.path().join("store");
        let config = BrokerConfig::default().durability(Durability::Flushed);
        let broker = Broker::open_with(&path, config).expect("open new store");

        let topic_config = TopicConfig::default().partitions(PARTITIONS);
        broker
            .create_topic(TOPIC, topic_config)
            .expect("create topic");
        let messages: Vec<Message> = (0..MESSAGES)
            .map(|i| Message::new(format!("order {i:03} {}", "x".repeat(300))).key(format!("{i}")))
            .collect();
        for batch in messages.chunks(20) {
            broker
                .publish_batch(TOPIC, batch.to_vec())
                .expect("publish");
        }

        let mut consumer = broker.subscribe(TOPIC, GROUP).expect("subscribe");
        for _ in 0..ACKED {
            let delivery = consumer
                .recv_timeout(Duration::from_secs(5))
                .expect("recv")
                .expect("delivery");
            delivery.ack().expect("ack");
        }

        let contents = contents(&broker);
        Store {
            _scratch: scratch,
            path,
            contents,
        }
    }

    fn db_len(&self) -> u64 {
        std::fs::metadata(self.path.join("db"))
            .expect("db file metadata")
            .len()
    }

    /// Copies the store's directory next to it.
    fn copy(&self, name: &str) -> DamagedCopy {
        let path = self.path.with_file_name(name);
        copy_dir(&self.path, &path);
        DamagedCopy { path }
    }
}

/// A copy of a store, for damaging.
struct DamagedCopy {
    path: PathBuf,
}

impl DamagedCopy {
    fn truncate_db(&self, len: u64) {
        OpenOptions::new()
            .write(true)
            .open(self.path.join("db"))
            .expect("open db file")
            .set_len(len)
            .expect("truncate db file");
    }

    fn overwrite_db(&self, position: u64, bytes: &[u8]) {
        let mut file = OpenOptions::new()
            .write(true)
            .open(self.path.join("db"))
            .expect("open db file");
        file.seek(SeekFrom::Start(position)).expect("seek");
        file.write_all(bytes).expect("overwrite db file");
    }

    /// Writes a value through a raw sled handle, as another program or version could.
    fn put_raw(&self, tree: &str, key: &[u8], value: &[u8]) {
        let db = sled::open(&self.path).expect("raw sled open");
        let tree = db.open_tree(tree).expect("raw sled tree");
        tree.insert(key, value).expect("raw sled insert");
        db.flush().expect("raw sled flush");
    }
}

/// Opens `path` on its own thread and fails the test if the open panics or takes longer than
/// [`OPEN_TIMEOUT`].
fn open_bounded(path: &Path, case: &str) -> aqueduct::Result<Broker> {
    let (sender, receiver) = mpsc::channel();
    let path = path.to_path_buf();
    thread::spawn(move || {
        let _ = sender.send(Broker::open(path));
    });
    match receiver.recv_timeout(OPEN_TIMEOUT) {
        Ok(outcome) => outcome,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{case}: Broker::open did not return within {OPEN_TIMEOUT:?}")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{case}: Broker::open panicked"),
    }
}

fn assert_corrupt(outcome: &aqueduct::Result<Broker>, case: &str) {
    assert!(
        matches!(outcome, Err(Error::Corrupt { .. })),
        "{case}: expected Error::Corrupt, got {outcome:?}"
    );
}

/// Returns every stored message of the topic, or an empty map if the topic is missing.
fn contents(broker: &Broker) -> Contents {
    let mut contents = Contents::new();
    for partition in 0..PARTITIONS {
        let Ok(messages) = broker.peek(TOPIC, partition, 0, usize::MAX) else {
            return Contents::new();
        };
        for message in messages {
            contents.insert((partition, message.offset), message.payload);
        }
    }
    contents
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy directory");
    for entry in std::fs::read_dir(from).expect("read store directory") {
        let entry = entry.expect("directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// Returns the path that runs this test binary again. On Linux that is `/proc/self/exe`,
/// which still runs this build after cargo replaced the file on disk with a newer one.
fn test_binary() -> PathBuf {
    let proc_exe = Path::new("/proc/self/exe");
    if proc_exe.exists() {
        return proc_exe.to_path_buf();
    }
    std::env::current_exe().expect("path of the test binary")
}
