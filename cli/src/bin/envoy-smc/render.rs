//! `envoy-smc render DESCRIPTION`: the Istio manifests and bootstrap fragments that put a mesh on
//! SMC (see `envoy_smc_cli::render`), to standard output or into a directory.

use std::path::{Path, PathBuf};

use envoy_smc_cli::render::{self, Description};

use crate::exit;

#[derive(clap::Args)]
pub struct Args {
    /// The description (YAML/JSON: mesh, namespaces, workloads, keep_tcp, listener_port, config,
    /// image, fortio, node, ...); `-` reads standard input.
    description: PathBuf,
    /// Write one file per manifest under this directory (bootstrap/, istio/, node/) instead of
    /// printing them.
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
    /// Print JSON: {"files": [{"path", "documents"}]}.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> u8 {
    let parsed = if args.description.as_os_str() == "-" {
        let mut text = String::new();
        match std::io::Read::read_to_string(&mut std::io::stdin(), &mut text) {
            Ok(_) => Description::from_yaml(&text, Some(Path::new("."))),
            Err(e) => {
                eprintln!("envoy-smc: cannot read standard input: {e}");
                return exit::USAGE;
            }
        }
    } else {
        Description::from_file(&args.description)
    };
    let desc = match parsed {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "envoy-smc: invalid description {}: {e}",
                args.description.display()
            );
            return exit::USAGE;
        }
    };
    let files = render::render(&desc);
    if let Some(dir) = &args.out {
        for f in &files {
            let path = dir.join(&f.path);
            let text = if args.json {
                serde_json::to_string_pretty(&serde_json::json!({"documents": f.documents}))
                    .unwrap_or_default()
                    + "\n"
            } else {
                f.to_yaml()
            };
            let written = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&path, text));
            if let Err(e) = written {
                eprintln!("envoy-smc: cannot write {}: {e}", path.display());
                return exit::UNAVAILABLE;
            }
            if !args.json {
                println!("{}", path.display());
            }
        }
        if args.json {
            let paths: Vec<String> = files
                .iter()
                .map(|f| dir.join(&f.path).display().to_string())
                .collect();
            println!("{}", serde_json::json!({"written": paths}));
        }
    } else if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&render::to_json(&files)).unwrap_or_default()
        );
    } else {
        print!("{}", render::to_yaml_stream(&files));
    }
    exit::OK
}
