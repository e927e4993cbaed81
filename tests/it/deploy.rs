//! The deployment files, checked without a Docker engine: every path the Dockerfile and
//! docker/compose.yml name exists, every command they run is one the binary accepts, the labels
//! NimbusImage lists worker images by are there, the torch pin matches the build's, and the
//! README's commands are real.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use cellpose_train_worker::cli::Cli;
use cellpose_train_worker::config::{Settings, Tool};
use clap::Parser;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Dockerfile instructions with continuation lines joined and comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let (op, rest) = cur.split_once(' ').unwrap_or((&cur, ""));
        out.push((op.to_uppercase(), rest.trim().to_string()));
        cur.clear();
    }
    out
}

/// `key="value"` / `key=value` pairs of a LABEL instruction.
fn labels(args: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = args.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=').expect("LABEL key=value");
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"').expect("closing quote");
            (q[..end].to_string(), &q[end + 1..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        out.insert(key.trim().to_string(), value);
        rest = tail.trim();
    }
    out
}

/// The instructions of `stage` and of the stages it is built `FROM`, base first.
fn stage_chain<'a>(ins: &'a [(String, String)], stage: &str) -> Vec<&'a (String, String)> {
    let starts: Vec<usize> =
        ins.iter().enumerate().filter(|(_, (op, _))| op == "FROM").map(|(i, _)| i).collect();
    let at = |name: &str| {
        starts
            .iter()
            .position(|&i| ins[i].1.rsplit(' ').next() == Some(name))
            .unwrap_or_else(|| panic!("no stage {name}"))
    };
    let k = at(stage);
    let end = starts.get(k + 1).copied().unwrap_or(ins.len());
    let own = &ins[starts[k]..end];
    let parent = own[0].1.split_whitespace().next().unwrap_or_default();
    let mut chain = if starts.iter().any(|&i| ins[i].1.rsplit(' ').next() == Some(parent)) {
        stage_chain(ins, parent)
    } else {
        Vec::new()
    };
    chain.extend(own);
    chain
}

/// The labels an image built to `stage` carries (a later LABEL overrides an earlier one).
fn stage_labels(ins: &[(String, String)], stage: &str) -> BTreeMap<String, String> {
    stage_chain(ins, stage).into_iter().filter(|(op, _)| op == "LABEL").flat_map(|(_, a)| labels(a)).collect()
}

/// The `CPW_*` variables an image built to `stage` sets (`ENV K=V ...` form).
fn stage_env(ins: &[(String, String)], stage: &str) -> HashMap<String, String> {
    stage_chain(ins, stage)
        .into_iter()
        .filter(|(op, _)| op == "ENV")
        .flat_map(|(_, a)| labels(a))
        .filter(|(k, _)| k.starts_with("CPW_"))
        .collect()
}

fn cli_accepts(args: &[String]) {
    let argv: Vec<&str> =
        std::iter::once("cellpose-train-worker").chain(args.iter().map(String::as_str)).collect();
    if let Err(e) = Cli::try_parse_from(&argv) {
        panic!("the binary does not accept {argv:?}:\n{e}");
    }
}

#[test]
fn dockerfile_copies_what_exists_runs_the_binary_and_carries_nimbusimage_labels() {
    let ins = instructions(&read("Dockerfile"));
    let stages: Vec<&str> =
        ins.iter().filter(|(op, _)| op == "FROM").map(|(_, a)| a.rsplit(' ').next().unwrap()).collect();
    assert_eq!(
        stages,
        ["build", "runtime", "cellposesam", "cellpose"],
        "a build stage, a runtime stage, one image per tool, the CPnet tool's last (the default target)"
    );

    let mut built = Vec::new(); // paths the build stage makes that the runtime stage copies
    for (op, args) in &ins {
        if op == "COPY" {
            let parts: Vec<&str> = args.split_whitespace().collect();
            let (flags, paths): (Vec<&str>, Vec<&str>) = parts.iter().partition(|p| p.starts_with("--"));
            let (dest, sources) = paths.split_last().expect("COPY src dest");
            assert!(!dest.is_empty());
            if flags.iter().any(|f| f.starts_with("--from=")) {
                built.extend(sources.iter().map(|s| s.to_string()));
                continue;
            }
            for s in sources {
                assert!(repo().join(s).exists(), "Dockerfile copies `{s}`, which is not in the repository");
            }
        }
    }
    let runs: String =
        ins.iter().filter(|(op, _)| op == "RUN").map(|(_, a)| a.as_str()).collect::<Vec<_>>().join("\n");
    // the runtime stage takes the build stage's staging root: the binary and the libraries it loads
    assert_eq!(built, ["/stage/"]);
    assert!(runs.contains(
        "install -D /usr/local/bin/cellpose-train-worker /stage/usr/local/bin/cellpose-train-worker"
    ));
    assert!(runs.contains("cp target/release/cellpose-train-worker /usr/local/bin/cellpose-train-worker"));
    assert!(runs.contains("cargo build --release --locked --bin cellpose-train-worker"));
    let cargo = read("Cargo.toml");
    assert!(
        cargo.contains("name = \"cellpose-train-worker\"\npath = \"src/main.rs\""),
        "the binary's name changed"
    );

    // the torch the image builds against is the pin the repository builds and tests with
    let pin = read("tools/requirements.txt").lines().find(|l| l.starts_with("torch==")).unwrap().to_string();
    assert!(runs.contains(&pin), "Dockerfile must install {pin}");
    assert!(cargo.contains("tch = \"=0.24.0\""));

    let entry = &ins.iter().find(|(op, _)| op == "ENTRYPOINT").expect("ENTRYPOINT").1;
    let entry: Vec<String> = serde_json::from_str(entry).expect("ENTRYPOINT in exec form");
    assert_eq!(entry, ["/usr/local/bin/cellpose-train-worker"]);
    // the platform appends the one-shot contract's flags; `serve` is the alternative command
    let oneshot = |request: &str, extra: &[&str]| {
        let base =
            ["--apiUrl", "http://girder:8080/api/v1", "--token", "t", "--parameters", "{}", "--request"];
        let args: Vec<String> = base.iter().chain(&[request]).chain(extra).map(|a| a.to_string()).collect();
        cli_accepts(&args);
    };
    oneshot("compute", &["--datasetId", "d"]);
    oneshot("interface", &[]);
    cli_accepts(&["serve".to_string()]);

    // each tool's image: the common labels of the runtime stage plus its own, and the setting
    // that makes its `interface` request register that tool whatever the image is named
    for (stage, tool, name) in [
        ("cellpose", Tool::Cellpose, "Cellpose retrain"),
        ("cellposesam", Tool::CellposeSam, "Cellpose-SAM retrain"),
    ] {
        let all = stage_labels(&ins, stage);
        for key in [
            "isUPennContrastWorker",
            "isAnnotationWorker",
            "isGPUWorker",
            "annotationConfigurationPanel",
            "advancedOptionsPanel",
            "description",
        ] {
            assert!(all.contains_key(key), "{stage}: label {key} missing: {all:?}");
        }
        assert_eq!(all["interfaceName"], name, "{stage}");
        assert_eq!(all["defaultToolName"], name, "{stage}");
        assert_eq!(all["interfaceCategory"], "Cellpose");
        assert_eq!(all["annotationShape"], "polygon");
        let env = stage_env(&ins, stage);
        let settings = Settings::load_with_env(Some(&repo().join("worker.toml")), Some(env))
            .unwrap_or_else(|e| panic!("{stage}: {e}"));
        assert_eq!(settings.oneshot.tool, tool, "{stage}");
    }

    // built-in weights are copied from docker/models into the folder the worker reads
    let env: String =
        ins.iter().filter(|(op, _)| op == "ENV").map(|(_, a)| a.as_str()).collect::<Vec<_>>().join(" ");
    assert!(
        env.contains("CPW_PATHS__MODELS_DIR=/models") && env.contains("CELLPOSE_LOCAL_MODELS_PATH=/models")
    );
    assert!(ins.iter().any(|(op, a)| op == "COPY" && a == "docker/models/ /models/"));
}

#[test]
fn compose_runs_commands_the_binary_accepts_with_settings_it_knows() {
    let compose: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read("docker/compose.yml")).unwrap();
    let services = compose["services"].as_mapping().expect("services");
    assert!(services.contains_key("worker") && services.contains_key("girder"));
    let base = repo().join("docker");
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        if let Some(ctx) = svc["build"]["context"].as_str() {
            let dockerfile = svc["build"]["dockerfile"].as_str().unwrap_or("Dockerfile");
            assert!(base.join(ctx).join(dockerfile).exists(), "{name}: build context has no {dockerfile}");
        }
        let command: Vec<String> = svc["command"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name}: command as a list"))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        cli_accepts(&command);
        if let Some(i) = command.iter().position(|a| a == "--config") {
            // the file the command names is the one the Dockerfile installs, from this repo
            assert_eq!(command[i + 1], "/etc/cellpose-train-worker/worker.toml");
            assert!(read("Dockerfile").contains("COPY worker.toml /etc/cellpose-train-worker/worker.toml"));
        }
        for vol in svc["volumes"].as_sequence().into_iter().flatten() {
            let host = vol.as_str().unwrap().split(':').next().unwrap();
            assert!(base.join(host).exists(), "{name}: volume source {host} does not exist");
        }
        // every CPW_ variable is a setting the worker knows (deny_unknown_fields) with a valid value
        let env: HashMap<String, String> = svc["environment"]
            .as_mapping()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                let v = v.as_str().unwrap();
                // `${VAR:?message}` is filled in by compose at start-up
                let v = if v.starts_with("${") { "placeholder" } else { v };
                (k.as_str().unwrap().to_string(), v.to_string())
            })
            .collect();
        if !env.is_empty() {
            let s = Settings::load_with_env(Some(&repo().join("worker.toml")), Some(env.clone()))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            if let Some(url) = env.get("CPW_GIRDER__API_URL") {
                assert_eq!(&s.girder.api_url, url);
                // the worker reaches the mock service by its compose name and port
                let port = services["girder"]["command"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .skip_while(|a| a.as_str() != Some("--port"))
                    .nth(1)
                    .unwrap();
                assert_eq!(url, &format!("http://girder:{}/api/v1", port.as_str().unwrap()));
            }
        }
    }
}

#[test]
fn an_unknown_setting_in_the_environment_is_refused() {
    let env = HashMap::from([("CPW_QUEUE__LEASE_SECONDS".to_string(), "30".to_string())]);
    let err = Settings::load_with_env(Some(&repo().join("worker.toml")), Some(env)).unwrap_err().to_string();
    assert!(err.contains("lease_seconds"), "{err}");
}

/// The fenced shell blocks of the README.
fn shell_blocks(readme: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut cur: Option<Vec<String>> = None;
    for line in readme.lines() {
        match (&mut cur, line.trim_start()) {
            (None, l) if l.starts_with("```sh") => cur = Some(Vec::new()),
            (Some(_), l) if l.starts_with("```") => blocks.push(cur.take().unwrap()),
            (Some(b), l) => b.push(l.to_string()),
            _ => {}
        }
    }
    blocks
}

#[test]
fn readme_gives_the_two_commands_and_its_examples_parse() {
    let readme = read("README.md");
    let blocks = shell_blocks(&readme);
    let first: Vec<&str> = blocks[0].iter().map(|l| l.split('#').next().unwrap().trim()).collect();
    assert_eq!(first, ["make demo", "make test"], "the fresh-machine block is exactly the two commands");
    let makefile = read("Makefile");
    assert!(makefile.contains("\ndemo: build\n\t./target/release/cellpose-train-worker demo\n"));
    assert!(makefile.contains("\ntest: setup\n\t./scripts/test.sh\n"));
    assert!(
        read(".ci/run").lines().any(|l| l.trim() == "make test"),
        ".ci/run calls the README's test command"
    );
    cli_accepts(&["demo".to_string()]);

    // every `$B ...` example is a command line the binary accepts
    let mut checked = 0;
    for block in &blocks {
        let mut joined = Vec::new();
        let mut cur = String::new();
        for l in block {
            let l = l.split(" #").next().unwrap().trim_end();
            if l.trim_start().starts_with('#') {
                continue;
            }
            match l.strip_suffix('\\') {
                Some(head) => cur.push_str(head),
                None => {
                    cur.push_str(l);
                    joined.push(std::mem::take(&mut cur));
                }
            }
        }
        for cmd in joined {
            let Some(rest) = cmd.trim().strip_prefix("$B ") else { continue };
            let args = shell_words(rest);
            cli_accepts(&args);
            checked += 1;
        }
    }
    assert!(checked >= 7, "README examples found: {checked}");

    // scripts the README names exist and are executable
    for script in [
        "bench/train_speed.sh",
        "bench/cpsam_train.sh",
        "bench/precision_ap.sh",
        "bench/rasterize.sh",
        "bench/run.sh",
        "scripts/test.sh",
        "scripts/setup.sh",
    ] {
        assert!(script.starts_with("scripts/") || readme.contains(script), "README does not name {script}");
        let meta = std::fs::metadata(repo().join(script)).unwrap_or_else(|e| panic!("{script}: {e}"));
        use std::os::unix::fs::PermissionsExt;
        assert!(meta.permissions().mode() & 0o111 != 0, "{script} is not executable");
    }
    assert!(Path::new(&repo().join("worker.toml")).exists());
}

/// Words of a shell command line as the shell splits them: whitespace outside quotes separates,
/// single and double quotes group (enough for the README's examples, e.g. `--author "Ada L"`).
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut cur, mut quote, mut any) = (Vec::new(), String::new(), None::<char>, false);
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        words.push(cur);
    }
    words
}
