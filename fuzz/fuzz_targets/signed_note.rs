//! C2SP signed notes and checkpoints (vault/src/log/note.rs) and the client's checkpoint check
//! (vault-client/src/trust.rs).
//!
//! Input: a mode byte, then text. Mode 0: a note to verify with the vault's verifier key (and,
//! if it verifies, a checkpoint to parse). Mode 1: a note body that the harness signs; it must
//! verify and give back exactly that body. Mode 2: a verifier key to parse, then the rest of the
//! input (after the first newline) as a note it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vault::log::note::{checkpoint_text, parse_checkpoint, NoteVerifier};
use vault_fuzz::note_signer;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let signer = note_signer();
    let key = signer.verifier_key();
    let verifier = NoteVerifier::parse(&key).expect("the harness key parses");
    match mode % 3 {
        0 => {
            if let Ok(body) = verifier.verify(text) {
                assert!(text.starts_with(body), "the verified text is a prefix of the note");
                if let Ok((origin, size, root)) = parse_checkpoint(body) {
                    let again = parse_checkpoint(&checkpoint_text(&origin, size, &root));
                    assert_eq!(again, Ok((origin, size, root)), "a parsed checkpoint renders and parses back");
                }
                let cp = vault_client::trust::open_checkpoint(&key, text);
                assert_eq!(cp.is_ok(), parse_checkpoint(body).is_ok());
            } else {
                assert!(vault_client::trust::open_checkpoint(&key, text).is_err());
            }
        }
        1 => {
            if !text.ends_with('\n') {
                return;
            }
            let note = signer.sign_note(text);
            assert_eq!(verifier.verify(&note), Ok(text), "a signed note verifies to its body");
        }
        _ => {
            let (vk, note) = text.split_once('\n').unwrap_or((text, ""));
            if let Ok(v) = NoteVerifier::parse(vk) {
                let _ = v.verify(note);
            }
        }
    }
});
