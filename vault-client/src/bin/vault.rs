//! `vault`: the command line for dossier systems and citizens. So far: `vault digest FILE...`
//! prints the BLAKE3-256 digests the server addresses contents by (the rest of the commands of
//! issue 5 are not built yet).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.split_first() {
        Some((cmd, files)) if cmd == "digest" && !files.is_empty() => {
            let mut ok = true;
            for f in files {
                match vault_client::digest_file(&PathBuf::from(f)) {
                    Ok(d) => println!("{d}  {f}"),
                    Err(e) => {
                        eprintln!("vault digest: {f}: {e}");
                        ok = false;
                    }
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        _ => {
            eprintln!("usage: vault digest FILE...   (prints the BLAKE3-256 digest of each file)");
            ExitCode::from(2)
        }
    }
}
