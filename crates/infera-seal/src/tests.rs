use std::io::Read;

use super::*;

fn ring(n: u8) -> Keyring {
    Keyring::from_key(&[n; 32])
}

#[test]
fn whole_files_round_trip_in_records() {
    let k = ring(1);
    for len in [
        0,
        1,
        RECORD_PLAINTEXT - 1,
        RECORD_PLAINTEXT,
        2 * RECORD_PLAINTEXT + 7,
    ] {
        let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let sealed = seal_all(&k, &plain).unwrap();
        assert!(is_sealed(&sealed));
        assert!(
            !sealed
                .windows(16)
                .any(|w| plain.len() > 64 && w == &plain[32..48])
        );
        assert_eq!(open_all(&k, &sealed, "f").unwrap(), plain);
    }
}

#[test]
fn every_flipped_byte_and_every_cut_is_detected() {
    let k = ring(1);
    let sealed = seal_all(&k, b"filename,predicted_class\nshirt.png,6\n").unwrap();
    for i in 0..sealed.len() {
        let mut bad = sealed.clone();
        bad[i] ^= 0x20;
        assert!(
            open_all(&k, &bad, "f").is_err(),
            "flip at byte {i} went unnoticed"
        );
    }
    for cut in 0..sealed.len() {
        assert!(
            open_all(&k, &sealed[..cut], "f").is_err(),
            "cut at {cut} went unnoticed"
        );
    }
    // Another key cannot open it; a file from elsewhere is not sealed.
    assert!(matches!(
        open_all(&ring(2), &sealed, "f"),
        Err(SealError::Damaged(_))
    ));
    assert!(matches!(
        open_all(&k, b"plain,csv\n", "f"),
        Err(SealError::NotSealed(_))
    ));
}

#[test]
fn records_cannot_be_swapped_or_moved_between_files() {
    let k = ring(1);
    let (mut w, mut a) = SealWriter::create(&k).unwrap();
    let r1 = w.record(b"one", false).unwrap();
    let r2 = w.record(b"two", true).unwrap();
    a.extend(&r2);
    a.extend(&r1);
    assert!(open_all(&k, &a, "f").is_err());
    let (mut w2, mut b) = SealWriter::create(&k).unwrap();
    b.extend(w2.record(b"x", false).unwrap());
    b.extend(&r2);
    assert!(open_all(&k, &b, "f").is_err());
}

#[test]
fn appending_resumes_and_finalizes_once() {
    let k = ring(3);
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("out.csv");
    let (mut w, head) = SealWriter::create(&k).unwrap();
    let mut bytes = head;
    bytes.extend(w.record(b"header\n", false).unwrap());
    bytes.extend(w.record(b"row1\n", false).unwrap());
    std::fs::write(&p, &bytes).unwrap();
    // A crash, then resume: the writer continues the sequence.
    let mut w = SealWriter::resume(&k, &p).unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    std::io::Write::write_all(&mut f, &w.record(b"row2\n", false).unwrap()).unwrap();
    // Unfinished files read as far as they go only when the end is not required.
    let unfinished = std::fs::read(&p).unwrap();
    assert!(open_all(&k, &unfinished, "f").is_err());
    let mut s = String::new();
    SealReader::new(unfinished.as_slice(), &k, "f", false)
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "header\nrow1\nrow2\n");
    finalize(&k, &p).unwrap();
    finalize(&k, &p).unwrap();
    let done = std::fs::read(&p).unwrap();
    assert_eq!(open_all(&k, &done, "f").unwrap(), b"header\nrow1\nrow2\n");
    assert!(SealWriter::resume(&k, &p).is_err());
    assert!(scan(&k, done.as_slice(), "f").unwrap().ended);
}

#[test]
fn key_files_in_every_form_and_rotation() {
    let d = tempfile::tempdir().unwrap();
    let raw = d.path().join("raw");
    std::fs::write(&raw, [9u8; 32]).unwrap();
    let hex = d.path().join("hex");
    std::fs::write(&hex, format!("{}\n", "09".repeat(32))).unwrap();
    let a = Keyring::load(&raw).unwrap();
    let b = Keyring::load(&hex).unwrap();
    assert_eq!(
        open_all(&b, &seal_all(&a, b"x").unwrap(), "f").unwrap(),
        b"x"
    );
    // Rotation: key 2 seals, key 1 still opens old files.
    let rotated = d.path().join("ring");
    std::fs::write(
        &rotated,
        format!(
            "# new first\n2 {}\n1 {}\n",
            "22".repeat(32),
            "11".repeat(32)
        ),
    )
    .unwrap();
    let old = Keyring::load(&{
        let p = d.path().join("old");
        std::fs::write(&p, format!("1 {}\n", "11".repeat(32))).unwrap();
        p
    })
    .unwrap();
    let r = Keyring::load(&rotated).unwrap();
    let old_file = seal_all(&old, b"old").unwrap();
    assert_eq!(open_all(&r, &old_file, "f").unwrap(), b"old");
    let new_file = seal_all(&r, b"new").unwrap();
    assert!(matches!(
        open_all(&old, &new_file, "f"),
        Err(SealError::UnknownKey(_, 2))
    ));
    for bad in [
        "",
        "zz",
        "1 abc",
        "x 0000",
        &format!("1 {}\n1 {}", "11".repeat(32), "11".repeat(32)),
    ] {
        let p = d.path().join("bad");
        std::fs::write(&p, bad).unwrap();
        assert!(Keyring::load(&p).is_err(), "{bad:?}");
    }
    assert!(!format!("{r:?}").contains("22"));
}
