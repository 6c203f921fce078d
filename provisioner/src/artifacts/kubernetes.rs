//! The Kubernetes binaries from the `debian-source` and `dir` sources, the pause
//! binary every source needs, and the version check every source's binaries pass.
//! (The `release` source downloads in `artifacts::release`.)

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use time::OffsetDateTime;

use super::build::{ArtifactError, Result};
use super::cache::{
    create_dir, empty_dir, go_build_cache, io_error, is_complete, kubernetes_dir, mark_complete, partial_path,
    pause_binary, remove_dir_if_present, rename, set_mode,
};
use super::commands::{format_elapsed, require, run, run_logged, start_log, APT_GET, DPKG_SOURCE, GCC, GO};
use super::{Artifacts, KUBERNETES_BINARIES};
use crate::system;
use crate::topology::Topology;

/// The only Kubernetes release Debian carries with its full server source: Debian 12's
/// `kubernetes` source package 1.20.5+really1.20.2 (later Debian releases ship the
/// client only, without `vendor/`).
pub const DEBIAN_SOURCE_VERSION: &str = "1.20.2";
/// The directory `apt-get source kubernetes` unpacks on Debian 12.
const DEBIAN_SOURCE_TREE: &str = "kubernetes-1.20.5+really1.20.2";
/// The commit of the v1.20.2 tag. Debian's tree is a `git archive` export, and its
/// `hack/lib/version.sh` names this commit and the tree state `archive`; `make`
/// stamps both into the binaries, and so does this build.
const DEBIAN_SOURCE_GIT_COMMIT: &str = "faecb196815e248d3ecfb03c680a4507229c2a56";
/// The Go import path of the tree in its GOPATH layout.
const KUBERNETES_PACKAGE: &str = "k8s.io/kubernetes";
/// The build tags `hack/lib/golang.sh` compiles the binaries with, and `dockerless`.
/// The lab's kubelets talk to containerd over CRI and never to Docker, and without the
/// tag cAdvisor's Docker support asks for Docker's root directory at every kubelet
/// start, five times a second apart, before the kubelet serves anything: 5 s of every
/// kubelet start, measured by timing `systemctl restart kubelet` to `/healthz` on a
/// worker (5.8 s with the tag left out, 0.8 s with it). Kubernetes 1.20 keeps the tag
/// building for nodes without Docker (`hack/verify-typecheck-dockerless.sh`); it
/// leaves out the kubelet's dockershim and cAdvisor's Docker support, nothing else.
const BUILD_TAGS: &str = "selinux,notest,dockerless";
/// The suffix of the cache directory that holds what this build makes: its build
/// tags, taken from the one list the build uses, so that binaries an older lab built
/// with other tags are built again rather than taken for these (see
/// `cache::kubernetes_dir`).
pub(super) fn debian_source_build_variant() -> String {
    format!("-{}", BUILD_TAGS.replace(',', "-"))
}
/// `build/pause/Makefile` of Kubernetes 1.20.2 builds pause 3.4 with
/// `-DVERSION=v$(TAG)-$(REV)`; the revision says who built it.
const PAUSE_VERSION: &str = "v3.4-debian";

pub(super) fn using_cached(topology: &Topology, dir: &Path, progress: &dyn Fn(&str)) {
    progress(&format!(
        "using cached Kubernetes v{} binaries ({}) from {}",
        topology.kubernetes.version,
        topology.kubernetes.source,
        dir.join("bin").display()
    ));
}

pub(super) fn debian_source_binaries(topology: &Topology, cache_dir: &Path, progress: &dyn Fn(&str)) -> Result<()> {
    const STEP: &str = "building Kubernetes from Debian's source";
    let dir = kubernetes_dir(topology, cache_dir);
    if is_complete(&dir) {
        using_cached(topology, &dir, progress);
        return Ok(());
    }
    require(STEP, GO)?;
    let tree = ensure_source_tree(cache_dir, progress)?;
    build_kubernetes(&tree, &dir, &go_build_cache(cache_dir), progress)?;
    build_pause(&tree, &dir.join("bin").join("pause"))?;
    let binaries = KUBERNETES_BINARIES.iter().map(|name| (*name, dir.join("bin").join(name)));
    check_versions(binaries, &topology.kubernetes.version)?;
    mark_complete(&dir)?;
    progress(&format!("Kubernetes v{DEBIAN_SOURCE_VERSION} binaries are in {}", dir.join("bin").display()));
    Ok(())
}

/// Debian's `kubernetes` source package unpacked under `cache_dir/src`. It is
/// fetched into a staging directory and renamed into place, so a tree that exists is
/// whole.
fn ensure_source_tree(cache_dir: &Path, progress: &dyn Fn(&str)) -> Result<PathBuf> {
    const STEP: &str = "fetching Debian's kubernetes source package";
    let src = cache_dir.join("src");
    let tree = src.join(DEBIAN_SOURCE_TREE);
    if tree.join("Makefile").is_file() {
        return Ok(tree);
    }
    require(STEP, APT_GET)?;
    require(STEP, DPKG_SOURCE)?;
    let staging = src.join(".staging");
    empty_dir(STEP, &staging)?;
    progress(&format!("fetching Debian's kubernetes source package (34 MB) into {}", src.display()));
    let mut command = Command::new(APT_GET.command);
    command.args(["source", "kubernetes"]).current_dir(&staging);
    match run(STEP, &mut command) {
        Err(ArtifactError::Command { failure, .. }) if failure.message.contains("deb-src") => {
            return Err(ArtifactError::NoDebSrc { step: STEP });
        }
        other => other?,
    };
    let unpacked = staging.join(DEBIAN_SOURCE_TREE);
    if !unpacked.join("Makefile").is_file() {
        let found = fs::read_dir(&staging)
            .map(|entries| {
                entries.filter_map(|entry| entry.ok()).map(|entry| entry.file_name().to_string_lossy().into_owned())
            })
            .map(|names| names.collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        return Err(ArtifactError::Missing {
            what: "the Kubernetes 1.20.2 source tree".to_string(),
            path: unpacked,
            hint: format!(
                "apt-get source kubernetes unpacked something else ({found}); is this host's apt on Debian 12?"
            ),
        });
    }
    remove_dir_if_present(STEP, &tree)?;
    rename(STEP, &unpacked, &tree)?;
    remove_dir_if_present(STEP, &staging)?;
    Ok(tree)
}

/// Builds the six binaries into `dir/bin` with `go build` in GOPATH mode, as
/// Kubernetes' `make` does in the end (`hack/lib/golang.sh`), but without the code
/// generators `make` builds and runs first: the tree ships what they write, except
/// the OpenAPI definitions (see `generate_openapi`). One `go build` for all six lets
/// Go spread the work over every core, and Go's build cache in `go_cache` makes a
/// rebuild a matter of linking. An interrupted build leaves nothing to clean up: the
/// binaries are built into a staging directory emptied first and renamed into
/// `dir/bin` once all six are built, the generated file is renamed into the tree
/// whole, and Go's build cache tolerates interruption.
fn build_kubernetes(tree: &Path, dir: &Path, go_cache: &Path, progress: &dyn Fn(&str)) -> Result<()> {
    const STEP: &str = "building Kubernetes from Debian's source";
    let go = GoPath::in_tree(tree, go_cache)?;
    let staging = dir.join("staging");
    empty_dir(STEP, &staging)?;
    let log = dir.join("build.log");
    start_log(STEP, &log)?;
    progress(&format!(
        "building Kubernetes v{DEBIAN_SOURCE_VERSION} from Debian's source in {} (about 6 minutes on 2 cores, \
         under a minute with Go's build cache in {} warm; log: {})",
        tree.display(),
        go_cache.display(),
        log.display()
    ));
    let started = Instant::now();
    generate_openapi(tree, &go, &staging, &log, progress)?;
    let staged_bin = staging.join("bin");
    create_dir(STEP, &staged_bin)?;
    // -trimpath keeps the source tree's path out of the binaries and out of the build
    // cache's keys (make passes -trimpath to the compiler for the first); -tags and
    // -ldflags are make's. -v logs each package as it is compiled, which the progress
    // lines show.
    let mut build = go.command(GO.command);
    build
        .args(["build", "-v", "-trimpath", "-tags", BUILD_TAGS, "-ldflags"])
        .arg(linker_flags(OffsetDateTime::now_utc()));
    build.arg("-o").arg(&staged_bin);
    build.args(KUBERNETES_BINARIES.iter().map(|name| format!("{KUBERNETES_PACKAGE}/cmd/{name}")));
    run_logged(STEP, &mut build, &log, "building Kubernetes", progress)?;
    progress(&format!("built Kubernetes in {}", format_elapsed(started.elapsed())));
    let bin = dir.join("bin");
    create_dir(STEP, &bin)?;
    for name in KUBERNETES_BINARIES {
        rename(STEP, &staged_bin.join(name), &bin.join(name))?;
    }
    remove_dir_if_present(STEP, &staging)
}

/// Where and how the build's `go` commands run: in GOPATH mode (Kubernetes 1.20
/// predates its modules build) with the tree linked into `.go/src/k8s.io/kubernetes`,
/// since a plain `go build -mod=vendor` fails on go.mod consistency.
struct GoPath<'a> {
    gopath: PathBuf,
    /// The tree as GOPATH sees it, `.go/src/k8s.io/kubernetes`.
    package_dir: PathBuf,
    cache: &'a Path,
}

impl<'a> GoPath<'a> {
    fn in_tree(tree: &Path, cache: &'a Path) -> Result<Self> {
        const STEP: &str = "linking the Kubernetes source into its GOPATH layout";
        let gopath = tree.join(".go");
        let package_dir = gopath.join("src").join(KUBERNETES_PACKAGE);
        if fs::symlink_metadata(&package_dir).is_err() {
            create_dir(STEP, package_dir.parent().expect("the link has a parent"))?;
            std::os::unix::fs::symlink("../../..", &package_dir).map_err(io_error(STEP, &package_dir))?;
        }
        Ok(GoPath { gopath, package_dir, cache })
    }

    /// `program` (go or a tool built here) with the environment of
    /// `hack/lib/golang.sh`, in the tree as GOPATH sees it, as `hack/run-in-gopath.sh`
    /// runs the generators.
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .current_dir(&self.package_dir)
            // Go takes the working directory from PWD when it names the same
            // directory, so it sees the path inside GOPATH rather than the link's
            // target outside it.
            .env("PWD", &self.package_dir)
            .env("GOPATH", &self.gopath)
            .env("GO111MODULE", "off")
            // A user's GOFLAGS (say -mod=mod) would be an error in GOPATH mode, and
            // GOOS or GOARCH would build binaries for another machine.
            .env("GOFLAGS", "")
            .env_remove("GOOS")
            .env_remove("GOARCH")
            .env("GOCACHE", self.cache)
            .env("CGO_ENABLED", "0");
        command
    }
}

/// Writes `pkg/generated/openapi/zz_generated.openapi.go`, which kube-apiserver
/// needs and the tree lacks (upstream keeps it out of git), with the tree's own
/// openapi-gen and the arguments `build/root/Makefile.generated_files` gives it. It is
/// written outside the package and renamed into place, so the file is whole or absent.
/// It is written again on every build: that costs seconds, and a file left by an
/// interrupted `make` of an earlier lab version is never trusted.
fn generate_openapi(tree: &Path, go: &GoPath, staging: &Path, log: &Path, progress: &dyn Fn(&str)) -> Result<()> {
    const STEP: &str = "generating Kubernetes' OpenAPI definitions";
    const OUTPUT_PACKAGE: &str = "pkg/generated/openapi";
    const OUTPUT_NAME: &str = "zz_generated.openapi";
    let inputs = openapi_input_packages(tree)?;
    let generator = staging.join("openapi-gen");
    let mut build = go.command(GO.command);
    build.args(["build", "-v", "-trimpath", "-tags", BUILD_TAGS, "-o"]).arg(&generator);
    build.arg(format!("{KUBERNETES_PACKAGE}/vendor/k8s.io/kube-openapi/cmd/openapi-gen"));
    run_logged(STEP, &mut build, log, "building openapi-gen", progress)?;
    // openapi-gen reads the standard library's types from GOROOT, which a binary
    // built with -trimpath does not know (hack/lib/golang.sh exports it too).
    let goroot = run(STEP, go.command(GO.command).args(["env", "GOROOT"]))?;
    let output_base = go.gopath.join("generated");
    empty_dir(STEP, &output_base)?;
    let mut generate = go.command(&generator);
    generate
        .env("GOROOT", goroot.trim())
        .args(["--logtostderr", "-i", &inputs.join(","), "-p"])
        .arg(format!("{KUBERNETES_PACKAGE}/{OUTPUT_PACKAGE}"))
        .args(["-O", OUTPUT_NAME, "-h"])
        .arg(tree.join("vendor/k8s.io/code-generator/hack/boilerplate.go.txt"))
        // The tree's types break some of the API rules openapi-gen checks, as its
        // known-violations list says; given a report file it lists them there instead
        // of failing.
        .arg("-r")
        .arg(staging.join("api-rule-violations.report"))
        .arg("-o")
        .arg(&output_base);
    run_logged(STEP, &mut generate, log, "generating the OpenAPI definitions", progress)?;
    let file_name = format!("{OUTPUT_NAME}.go");
    let generated = output_base.join(KUBERNETES_PACKAGE).join(OUTPUT_PACKAGE).join(&file_name);
    rename(STEP, &generated, &tree.join(OUTPUT_PACKAGE).join(&file_name))?;
    remove_dir_if_present(STEP, &output_base)
}

/// The packages openapi-gen reads for Kubernetes' own definitions, found as
/// `build/root/Makefile.generated_files` finds them (`KUBE_OPENAPI_DIRS`): the
/// directories of Go files in the tree, apart from `vendor/` and the top-level
/// directories starting with `_` or `.`, with `staging/src/` named `vendor/`, that
/// hold a Go file asking for OpenAPI definitions; the code generator's and the sample
/// apiserver's examples are left out. Sorted, as the Makefile sorts them.
fn openapi_input_packages(tree: &Path) -> Result<Vec<String>> {
    const STEP: &str = "finding the packages with OpenAPI definitions";
    const LEFT_OUT: [&str; 2] = ["vendor/k8s.io/code-generator/", "vendor/k8s.io/sample-apiserver/"];
    let mut packages = BTreeSet::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let dir = tree.join(&relative);
        for entry in fs::read_dir(&dir).map_err(io_error(STEP, &dir))? {
            let entry = entry.map_err(io_error(STEP, &dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // Like the Makefile's `find`, this follows no symbolic links.
            let kind = entry.file_type().map_err(io_error(STEP, &entry.path()))?;
            if kind.is_dir() {
                let pruned = relative.as_os_str().is_empty()
                    && (name.starts_with('_') || name.starts_with('.') || name == "vendor");
                if !pruned {
                    pending.push(relative.join(name.as_ref()));
                }
            } else if kind.is_file() && name.ends_with(".go") {
                let source = fs::read(entry.path()).map_err(io_error(STEP, &entry.path()))?;
                if !asks_for_openapi(&String::from_utf8_lossy(&source)) {
                    continue;
                }
                let relative = relative.to_string_lossy();
                let package = match relative.strip_prefix("staging/src/") {
                    Some(rest) => format!("vendor/{rest}"),
                    None => relative.into_owned(),
                };
                if !LEFT_OUT.iter().any(|prefix| format!("{package}/").starts_with(prefix)) {
                    packages.insert(format!("{KUBERNETES_PACKAGE}/{package}"));
                }
            }
        }
    }
    Ok(packages.into_iter().collect())
}

/// Whether a Go file asks for OpenAPI definitions by the Makefile's two greps: a
/// `// +k8s:` comment tag at the start of a line (`^// *+k8s:`), and
/// `+k8s:openapi-gen=` anywhere.
fn asks_for_openapi(source: &str) -> bool {
    let tagged =
        |line: &str| line.strip_prefix("//").is_some_and(|rest| rest.trim_start_matches(' ').starts_with("+k8s:"));
    source.contains("+k8s:openapi-gen=") && source.lines().any(tagged)
}

/// The `-ldflags` of `hack/lib/golang.sh`: no symbol table, DWARF or build ID, and
/// the version stamps of `hack/lib/version.sh` in both packages that report them.
fn linker_flags(build_time: OffsetDateTime) -> String {
    let mut version = DEBIAN_SOURCE_VERSION.split('.');
    let (major, minor) = (version.next().unwrap_or_default(), version.next().unwrap_or_default());
    let build_date = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        build_time.year(),
        u8::from(build_time.month()),
        build_time.day(),
        build_time.hour(),
        build_time.minute(),
        build_time.second()
    );
    let git_version = format!("v{DEBIAN_SOURCE_VERSION}");
    let stamps = [
        ("buildDate", build_date.as_str()),
        ("gitCommit", DEBIAN_SOURCE_GIT_COMMIT),
        ("gitTreeState", "archive"),
        ("gitVersion", git_version.as_str()),
        ("gitMajor", major),
        ("gitMinor", minor),
    ];
    let mut flags = String::from("-s -w -buildid=");
    for package in ["client-go/pkg/version", "component-base/version"] {
        for (name, value) in stamps {
            flags.push_str(&format!(" -X {KUBERNETES_PACKAGE}/vendor/k8s.io/{package}.{name}={value}"));
        }
    }
    flags
}

/// Compiles the pause binary statically from the source tree, as Kubernetes'
/// `build/pause/Makefile` does.
fn build_pause(tree: &Path, destination: &Path) -> Result<()> {
    const STEP: &str = "compiling the pause binary";
    require(STEP, GCC)?;
    let libc = run(STEP, Command::new(GCC.command).arg("-print-file-name=libc.a"))?;
    if !libc.trim().starts_with('/') {
        return Err(ArtifactError::MissingTool {
            step: STEP,
            what: "the static C library (libc.a)".to_string(),
            package: "libc6-dev",
        });
    }
    create_dir(STEP, destination.parent().expect("the pause binary has a parent"))?;
    let partial = partial_path(destination);
    let mut gcc = Command::new(GCC.command);
    gcc.args(["-Os", "-Wall", "-Werror", "-static", &format!("-DVERSION={PAUSE_VERSION}"), "-o"])
        .arg(&partial)
        .arg(tree.join("build/pause/linux/pause.c"));
    run(STEP, &mut gcc)?;
    set_mode(STEP, &partial, 0o755)?;
    rename(STEP, &partial, destination)
}

/// The pause binary for the `release` and `dir` sources, compiled from Debian's
/// source tree once.
pub(super) fn ensure_pause(topology: &Topology, cache_dir: &Path, progress: &dyn Fn(&str)) -> Result<()> {
    let destination = pause_binary(topology, cache_dir);
    if destination.is_file() {
        return Ok(());
    }
    let tree = ensure_source_tree(cache_dir, progress)?;
    progress(&format!("compiling the pause binary into {}", destination.display()));
    build_pause(&tree, &destination)
}

/// `source = "dir"`: the binaries are used where they are, after checking that each
/// one is there, runs, and is the configured version.
pub(super) fn directory_binaries(
    topology: &Topology,
    cache_dir: &Path,
    artifacts: &Artifacts,
    progress: &dyn Fn(&str),
) -> Result<()> {
    let dir = topology.kubernetes.dir.as_ref().ok_or(ArtifactError::DirNotSet)?;
    let binaries = artifacts.binaries.iter().map(|(name, path)| (name.as_str(), path.clone()));
    check_versions(binaries, &topology.kubernetes.version)?;
    progress(&format!(
        "using Kubernetes v{} binaries from {} (each reports v{})",
        topology.kubernetes.version,
        dir.display(),
        topology.kubernetes.version
    ));
    ensure_pause(topology, cache_dir, progress)
}

/// Checks that each binary exists, is executable and reports `version`.
pub(super) fn check_versions<'a>(binaries: impl Iterator<Item = (&'a str, PathBuf)>, version: &str) -> Result<()> {
    let expected = format!("v{version}");
    for (name, path) in binaries {
        let executable = fs::metadata(&path).map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0);
        match executable {
            Err(_) => {
                return Err(ArtifactError::Missing {
                    what: format!("the Kubernetes binary {name}"),
                    path,
                    hint: "put every Kubernetes binary into kubernetes.dir".to_string(),
                })
            }
            Ok(false) => return Err(ArtifactError::NotExecutable { path }),
            Ok(true) => {}
        }
        // kubectl has no --version flag; `version --client` does not contact a server.
        let args: &[&str] = if name == "kubectl" { &["version", "--client"] } else { &["--version"] };
        let mut command = Command::new(&path);
        command.args(args);
        let output = run("checking the Kubernetes binaries' versions", &mut command)?;
        let reported = reported_version(&output).ok_or_else(|| ArtifactError::VersionUnknown {
            path: path.clone(),
            command: system::command_line(&command),
            output: output.trim().chars().take(200).collect(),
        })?;
        if reported != expected {
            return Err(ArtifactError::VersionMismatch { path, reported, expected: version.to_string() });
        }
    }
    Ok(())
}

/// The first `vMAJOR.MINOR.PATCH[-suffix]` word of a `--version` output, in any of
/// the forms Kubernetes prints: `Kubernetes v1.20.2`, `GitVersion:"v1.20.2"`,
/// `Client Version: v1.28.0`.
fn reported_version(output: &str) -> Option<String> {
    let bytes = output.as_bytes();
    (0..bytes.len()).find_map(|start| {
        let at_word_start = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
        if !at_word_start || bytes[start] != b'v' || !bytes.get(start + 1).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        let word: String =
            output[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+')).collect();
        (word.matches('.').count() >= 2).then_some(word)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use sha2::{Digest as _, Sha256};

    use super::*;
    use crate::artifacts::build::kubernetes_cached;
    use crate::artifacts::test_support::{topology, Recorder};

    #[test]
    fn an_unfinished_build_is_not_cached() {
        let cache = tempfile::tempdir().unwrap();
        let topology = topology();
        let dir = kubernetes_dir(&topology, cache.path());
        assert_eq!(dir, cache.path().join("kubernetes/debian-source-v1.20.2-selinux-notest-dockerless"));
        fs::create_dir_all(dir.join("bin")).unwrap();
        for name in KUBERNETES_BINARIES.iter().chain(["pause"].iter()) {
            fs::write(dir.join("bin").join(name), name).unwrap();
        }
        assert!(!kubernetes_cached(&topology, cache.path()), "no marker yet");
        mark_complete(&dir).unwrap();
        assert!(kubernetes_cached(&topology, cache.path()));
        let sums = fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
        assert_eq!(sums.lines().count(), 7);
        assert!(sums.contains(&format!("{}  kubelet\n", hex::encode(Sha256::digest(b"kubelet")))), "{sums}");

        let recorder = Recorder::default();
        debian_source_binaries(&topology, cache.path(), &|line| recorder.record(line)).unwrap();
        let lines = recorder.lines();
        assert_eq!(
            lines,
            [format!("using cached Kubernetes v1.20.2 binaries (debian-source) from {}", dir.join("bin").display())]
        );
    }

    #[test]
    fn openapi_inputs_are_found_as_the_makefile_finds_them() {
        let tree = tempfile::tempdir().unwrap();
        let write = |path: &str, text: &str| {
            let path = tree.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        };
        let asking = "// +k8s:openapi-gen=true\n\npackage v1\n";
        write("staging/src/k8s.io/api/core/v1/doc.go", "// +k8s:deepcopy-gen=package\n// +k8s:openapi-gen=true\n");
        write("staging/src/k8s.io/api/core/v1/types.go", "package v1\n");
        write("pkg/apis/abac/v1beta1/doc.go", asking);
        write("staging/src/k8s.io/code-generator/_examples/apiserver/apis/example/v1/doc.go", asking);
        write("staging/src/k8s.io/sample-apiserver/pkg/apis/wardle/v1alpha1/doc.go", asking);
        write("staging/src/k8s.io/code-generator-extra/doc.go", asking);
        write("test/_nested/doc.go", asking);
        write("vendor/github.com/example/doc.go", asking);
        write("_output/local/go/src/doc.go", asking);
        write(".go/generated/doc.go", asking);
        write("pkg/apis/abac/v1beta1/notes.txt", asking);
        // A tag in a struct's comment alone is not the column-0 tag the Makefile greps.
        write("pkg/kubelet/apis/config/types.go", "package config\n\ttype A struct {\n\t// +k8s:openapi-gen=false\n");
        fs::create_dir_all(tree.path().join("vendor/k8s.io")).unwrap();
        std::os::unix::fs::symlink("../../staging/src/k8s.io/api", tree.path().join("vendor/k8s.io/api")).unwrap();
        std::os::unix::fs::symlink("pkg/apis", tree.path().join("pkg/linked")).unwrap();

        assert_eq!(
            openapi_input_packages(tree.path()).unwrap(),
            [
                "k8s.io/kubernetes/pkg/apis/abac/v1beta1",
                "k8s.io/kubernetes/test/_nested",
                "k8s.io/kubernetes/vendor/k8s.io/api/core/v1",
                "k8s.io/kubernetes/vendor/k8s.io/code-generator-extra",
            ]
        );
        assert!(asks_for_openapi("//+k8s:openapi-gen=true\n"));
        assert!(asks_for_openapi("// +k8s:deepcopy-gen=package\n\n\t// +k8s:openapi-gen=x\n"));
        assert!(!asks_for_openapi("// +k8s:deepcopy-gen=package\n"));
        assert!(!asks_for_openapi("/* +k8s:openapi-gen=true */\n"));
    }

    #[test]
    fn the_binaries_carry_makes_version_stamps() {
        let built = OffsetDateTime::from_unix_timestamp(1_610_544_000).unwrap();
        let flags = linker_flags(built);
        assert!(flags.starts_with("-s -w -buildid= -X "), "{flags}");
        for package in ["client-go/pkg/version", "component-base/version"] {
            let prefix = format!("-X k8s.io/kubernetes/vendor/k8s.io/{package}.");
            for stamp in [
                "buildDate=2021-01-13T13:20:00Z",
                "gitCommit=faecb196815e248d3ecfb03c680a4507229c2a56",
                "gitTreeState=archive",
                "gitVersion=v1.20.2",
                "gitMajor=1",
                "gitMinor=20",
            ] {
                assert!(flags.contains(&format!(" {prefix}{stamp}")), "{stamp} in {flags}");
            }
        }
        assert_eq!(flags.matches(" -X ").count(), 12, "{flags}");
    }

    #[test]
    fn go_runs_in_gopath_mode_with_the_labs_build_cache() {
        let tree = tempfile::tempdir().unwrap();
        let cache = tree.path().join("go-build");
        let go = GoPath::in_tree(tree.path(), &cache).unwrap();
        let package_dir = tree.path().join(".go/src/k8s.io/kubernetes");
        assert_eq!(fs::read_link(&package_dir).unwrap(), Path::new("../../.."));
        assert_eq!(fs::canonicalize(&package_dir).unwrap(), fs::canonicalize(tree.path()).unwrap());
        GoPath::in_tree(tree.path(), &cache).expect("an existing link is kept");

        let command = go.command("go");
        assert_eq!(command.get_current_dir(), Some(package_dir.as_path()));
        let env: BTreeMap<String, Option<String>> = command
            .get_envs()
            .map(|(name, value)| {
                (name.to_string_lossy().into_owned(), value.map(|value| value.to_string_lossy().into_owned()))
            })
            .collect();
        let set = |value: &Path| Some(value.display().to_string());
        assert_eq!(env["GOPATH"], set(&tree.path().join(".go")));
        assert_eq!(env["PWD"], set(&package_dir));
        assert_eq!(env["GOCACHE"], set(&cache));
        assert_eq!(env["GO111MODULE"].as_deref(), Some("off"));
        assert_eq!(env["GOFLAGS"].as_deref(), Some(""));
        assert_eq!(env["CGO_ENABLED"].as_deref(), Some("0"));
        assert_eq!((&env["GOOS"], &env["GOARCH"]), (&None, &None));
    }

    /// Builds the binaries from a real tree into a fresh cache twice: the first time
    /// with Go's build cache empty, the second after removing the finished binaries
    /// (as a changed cache layout would), with it warm. Run it with
    /// `LAB_TEST_KUBERNETES_TREE=/path/to/kubernetes-1.20.5+really1.20.2 cargo nextest
    /// run -p provisioner --lib --run-ignored ignored-only --no-capture debian_source`;
    /// the tree gets its GOPATH link and the generated OpenAPI file, as the cache's does.
    #[test]
    #[ignore = "builds Kubernetes for minutes from the tree LAB_TEST_KUBERNETES_TREE names"]
    fn debian_source_builds_cold_then_from_the_go_build_cache() {
        let tree = std::env::var_os("LAB_TEST_KUBERNETES_TREE")
            .expect("LAB_TEST_KUBERNETES_TREE names an unpacked kubernetes-1.20.5+really1.20.2 tree");
        let cache = tempfile::tempdir().unwrap();
        fs::create_dir(cache.path().join("src")).unwrap();
        std::os::unix::fs::symlink(&tree, cache.path().join("src").join(DEBIAN_SOURCE_TREE)).unwrap();
        let topology = topology();
        let dir = kubernetes_dir(&topology, cache.path());
        for go_build_cache_state in ["empty", "warm"] {
            let started = Instant::now();
            debian_source_binaries(&topology, cache.path(), &|line| eprintln!("{line}")).unwrap();
            eprintln!("built with Go's build cache {go_build_cache_state} in {:.1} s", started.elapsed().as_secs_f64());
            assert!(kubernetes_cached(&topology, cache.path()));
            assert!(!dir.join("staging").exists());
            let mut kubectl = Command::new(dir.join("bin/kubectl"));
            kubectl.args(["version", "--client"]);
            let version = run("checking kubectl", &mut kubectl).unwrap();
            for stamp in [r#"Major:"1""#, r#"Minor:"20""#, r#"GitCommit:"faecb196815e248d3ecfb03c680a4507229c2a56""#] {
                assert!(version.contains(stamp), "{stamp} in {version}");
            }
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn versions_are_read_from_every_output_form() {
        assert_eq!(reported_version("Kubernetes v1.20.2\n").as_deref(), Some("v1.20.2"));
        let kubectl = r#"Client Version: version.Info{Major:"1", Minor:"20", GitVersion:"v1.20.2", GitCommit:"abc"}"#;
        assert_eq!(reported_version(kubectl).as_deref(), Some("v1.20.2"));
        assert_eq!(reported_version("Client Version: v1.28.0\nKustomize Version: v5.0.4").as_deref(), Some("v1.28.0"));
        assert_eq!(reported_version("Kubernetes v1.30.0-rc.1").as_deref(), Some("v1.30.0-rc.1"));
        assert_eq!(reported_version("dev1.2.3 v1 v2.0"), None);
    }

    #[test]
    fn dir_binaries_must_run_and_report_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &'static str, text: &str, mode: u32| {
            let path = dir.path().join(name);
            fs::write(&path, format!("#!/bin/sh\necho '{text}'\n")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            (name, path)
        };
        let good = script("kubelet", "Kubernetes v1.20.2", 0o755);
        let kubectl = script("kubectl", r#"Client Version: version.Info{GitVersion:"v1.20.2"}"#, 0o755);
        check_versions([good.clone(), kubectl].into_iter(), "1.20.2").unwrap();

        let newer = script("kube-proxy", "Kubernetes v1.21.0", 0o755);
        let error = check_versions([good.clone(), newer].into_iter(), "1.20.2").unwrap_err().to_string();
        assert!(
            error.contains("kube-proxy reports Kubernetes v1.21.0 but kubernetes.version is \"1.20.2\""),
            "{error}"
        );

        let plain = script("kube-scheduler", "Kubernetes v1.20.2", 0o644);
        let error = check_versions([plain].into_iter(), "1.20.2").unwrap_err().to_string();
        assert!(error.contains("kube-scheduler is not an executable file"), "{error}");

        let missing = ("kube-apiserver", dir.path().join("kube-apiserver"));
        let error = check_versions([missing].into_iter(), "1.20.2").unwrap_err().to_string();
        assert!(error.contains("the Kubernetes binary kube-apiserver is missing at"), "{error}");
    }
}
