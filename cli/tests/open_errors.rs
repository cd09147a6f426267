//! Databases the tool must not open: locked, missing, or not a database.

mod common;

use common::{aqueduct, aqueduct_without_db, prepare};

#[test]
fn locked_database_is_rejected() {
    let db = prepare(1);
    let holder = common::open(db.path());
    let run = aqueduct(db.path(), &["topics"]);
    assert_eq!(run.status, Some(1));
    assert!(
        run.stderr.contains("is locked by a running process"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("stop the application"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    drop(holder);
}

#[test]
fn locked_database_rejected_in_json_mode() {
    let db = prepare(1);
    let holder = common::open(db.path());
    let run = aqueduct(db.path(), &["--json", "groups"]);
    assert_eq!(run.status, Some(1));
    let error = run.json()["error"]
        .as_str()
        .expect("an error field")
        .to_string();
    assert!(error.contains("open"), "{error}");
    assert!(run.stderr.contains(&error), "{}", run.stderr);
    drop(holder);
}

#[test]
fn missing_directory_fails() {
    let parent = tempfile::tempdir().expect("temporary directory");
    let missing = parent.path().join("no-such-db");
    let run = aqueduct(&missing, &["topics"]);
    assert_eq!(run.status, Some(1));
    assert!(run.stderr.contains("not found"), "{}", run.stderr);
    assert!(run.stderr.contains("no-such-db"), "{}", run.stderr);
    assert!(!missing.exists(), "the tool created {}", missing.display());
}

#[test]
fn empty_directory_is_not_a_database() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let run = aqueduct(dir.path(), &["topics"]);
    assert_eq!(run.status, Some(1));
    assert!(
        run.stderr.contains("is not a broker database"),
        "{}",
        run.stderr
    );
    let entries = std::fs::read_dir(dir.path()).expect("read dir").count();
    assert_eq!(entries, 0, "the tool wrote into the directory");
}

#[test]
fn file_is_not_a_database() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("conf");
    std::fs::write(&file, b"").expect("write file");
    let run = aqueduct(&file, &["topics"]);
    assert_eq!(run.status, Some(1));
    assert!(run.stderr.contains("not a directory"), "{}", run.stderr);
}

#[test]
fn missing_db_option_is_usage_error() {
    let run = aqueduct_without_db(&["topics"]);
    assert_eq!(run.status, Some(2));
    assert!(run.stderr.contains("--db"), "{}", run.stderr);
}

#[test]
fn db_from_environment() {
    let db = prepare(1);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_aqueduct"))
        .args(["topics", "--json"])
        .env("AQUEDUCT_DB", db.path())
        .output()
        .expect("run the aqueduct binary");
    assert_eq!(output.status.code(), Some(0));
}
