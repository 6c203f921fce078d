//! The container images the pods run, each an OCI archive written by
//! `artifacts::oci` from files this host provides: the pause binary, Debian's static
//! busybox, the lab's own DNS server built from the workspace with its shared
//! libraries, and BIND's DNS tools extracted from Debian's mirror.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::build::{ArtifactError, Result};
use super::cache::{
    create_dir, empty_dir, install_file, io_error, lab_dns_binary, partial_path, pause_binary, remove_dir_if_present,
    rename, set_mode, write_atomically,
};
use super::commands::{format_elapsed, require, run, run_logged, start_log, APT_GET, DPKG_DEB, LDD, MMDEBSTRAP, STRIP};
use super::oci::{self, ImageSpec, LayerFile};
use super::{images, Artifacts};
use crate::debian;
use crate::system;
use crate::topology::{DnsAddon, Topology};

/// The stamp beside each image archive: what it was made from.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct ImageStamp {
    reference: String,
    inputs_sha256: String,
    manifest_digest: String,
}

pub(super) fn ensure_images(
    topology: &Topology,
    cache_dir: &Path,
    workspace_dir: &Path,
    artifacts: &Artifacts,
    progress: &dyn Fn(&str),
) -> Result<()> {
    for archive in &artifacts.images {
        let spec = match archive.reference.as_str() {
            images::PAUSE => pause_image(&pause_binary(topology, cache_dir)),
            images::WEB => {
                let busybox = ensure_busybox(cache_dir, progress)?;
                web_image(&busybox, &busybox_applets(&busybox)?)
            }
            images::LAB_DNS if topology.addons.dns != DnsAddon::LabDns => continue,
            images::LAB_DNS => {
                let binary = ensure_lab_dns_binary(workspace_dir, cache_dir, progress)?;
                lab_dns_image(&binary, &shared_libraries(&binary)?)
            }
            images::DNSUTILS => {
                let root = ensure_dnsutils_root(cache_dir, progress)?;
                dnsutils_image(&root)?
            }
            other => return Err(ArtifactError::UnknownImage { reference: other.to_string() }),
        };
        ensure_archive(&spec, &archive.path, progress)?;
    }
    Ok(())
}

/// Writes the archive of `spec` unless the stamp beside it says it was made from
/// the same inputs.
fn ensure_archive(spec: &ImageSpec, archive: &Path, progress: &dyn Fn(&str)) -> Result<()> {
    const STEP: &str = "writing an image archive";
    let inputs_sha256 = oci::inputs_digest(spec)?;
    let stamp_path = stamp_path(archive);
    let stamp: Option<ImageStamp> = fs::read(&stamp_path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let current = stamp.is_some_and(|stamp| stamp.reference == spec.reference && stamp.inputs_sha256 == inputs_sha256);
    if current && archive.is_file() {
        progress(&format!("using cached image {} from {}", spec.reference, archive.display()));
        return Ok(());
    }
    progress(&format!("writing image {} to {}", spec.reference, archive.display()));
    let digests = oci::write_archive(spec, archive)?;
    let stamp = ImageStamp { reference: spec.reference.clone(), inputs_sha256, manifest_digest: digests.manifest };
    let json = serde_json::to_vec_pretty(&stamp).expect("the stamp serializes to JSON");
    write_atomically(STEP, &stamp_path, &json)
}

fn stamp_path(archive: &Path) -> PathBuf {
    let mut name = archive.file_name().unwrap_or_default().to_os_string();
    name.push(".json");
    archive.with_file_name(name)
}

/// The sandbox image: the static pause binary alone.
fn pause_image(pause: &Path) -> ImageSpec {
    let mut spec = ImageSpec::new(images::PAUSE);
    spec.entrypoint = vec!["/pause".to_string()];
    spec.files = vec![LayerFile::local("/pause", 0o755, pause)];
    spec
}

/// Busybox's httpd runs `/cgi-bin/index.cgi` for `/` when there is no index.html;
/// answering with the hostname, which is the pod's name, lets a test tell which pod
/// behind a Service or NodePort served a request.
const WEB_INDEX_CGI: &str = "#!/bin/sh\n\
# Answers with the name of the pod that served the request.\n\
printf 'Content-Type: text/plain\\r\\n\\r\\n'\n\
/bin/hostname\n";

/// The web image: Debian's static busybox with a link for each applet (so `sh`,
/// `wget` and `nslookup` work inside the pod for checks) and httpd serving
/// `/www` on `images::WEB_PORT`.
fn web_image(busybox: &Path, applets: &[String]) -> ImageSpec {
    let mut spec = ImageSpec::new(images::WEB);
    let port = images::WEB_PORT.to_string();
    spec.entrypoint = ["/bin/busybox", "httpd", "-f", "-v", "-p", &port, "-h", "/www"].map(String::from).to_vec();
    spec.env = vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
    spec.exposed_ports = vec![format!("{}/tcp", images::WEB_PORT)];
    spec.files = vec![
        LayerFile::local("/bin/busybox", 0o755, busybox),
        LayerFile::bytes("/www/cgi-bin/index.cgi", 0o755, WEB_INDEX_CGI),
    ];
    spec.files.extend(
        applets
            .iter()
            .filter(|applet| applet.as_str() != "bin/busybox")
            .map(|applet| LayerFile::symlink(format!("/{applet}"), "/bin/busybox")),
    );
    spec
}

/// The lab's DNS server image: the binary and the shared libraries it loads, each at
/// the path the dynamic loader looks it up at, and nothing else.
fn lab_dns_image(binary: &Path, libraries: &[PathBuf]) -> ImageSpec {
    let mut spec = ImageSpec::new(images::LAB_DNS);
    spec.entrypoint = vec!["/lab-dns".to_string()];
    spec.files = vec![LayerFile::local("/lab-dns", 0o755, binary)];
    spec.files.extend(
        libraries.iter().map(|library| LayerFile::local(library.to_string_lossy().into_owned(), 0o755, library)),
    );
    spec
}

/// Debian packages of the dnsutils image: the DNS tools of BIND (`nslookup`, `dig`,
/// `host`), which resolve through the C library's rules for the search path and
/// `ndots` as every application in a pod does, and a static busybox for `sh` and
/// `sleep`. busybox's own `nslookup` applies the search path to dotless names only,
/// so it cannot show what `kubernetes.default` resolves to for a pod.
const DNSUTILS_PACKAGES: &str = "bind9-dnsutils,busybox-static";

/// The dnsutils image, as the Kubernetes documentation's DNS debugging page uses one:
/// a pod that sleeps, for `kubectl exec dnsutils -- nslookup kubernetes.default`.
/// Its files are the extracted packages as they are; busybox gives only the three
/// applets the pod itself needs, so that no applet hides a BIND tool of the same name.
fn dnsutils_image(root: &Path) -> Result<ImageSpec> {
    let mut spec = ImageSpec::new(images::DNSUTILS);
    spec.entrypoint = ["/bin/busybox", "sleep", "infinity"].map(String::from).to_vec();
    spec.env = vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
    spec.files = oci::tree_files(root).map_err(io_error("reading the dnsutils root", root))?;
    for applet in ["sh", "sleep", "cat"] {
        let path = format!("/bin/{applet}");
        if !spec.files.iter().any(|file| file.path == path) {
            spec.files.push(LayerFile::symlink(path, "/bin/busybox"));
        }
    }
    Ok(spec)
}

/// The dnsutils image's root: `DNSUTILS_PACKAGES` and their dependencies extracted
/// (not installed: no maintainer scripts run, none are needed to run the tools) by
/// mmdebstrap from Debian's mirror into `CACHE/dnsutils/rootfs`, once. The `complete`
/// marker is written last, so an interrupted extraction is done again.
fn ensure_dnsutils_root(cache_dir: &Path, progress: &dyn Fn(&str)) -> Result<PathBuf> {
    const STEP: &str = "extracting the dnsutils image's packages";
    let dir = cache_dir.join("dnsutils");
    let root = dir.join("rootfs");
    let marker = dir.join("complete");
    if marker.is_file() && root.is_dir() {
        return Ok(root);
    }
    require(STEP, MMDEBSTRAP)?;
    let partial = dir.join("rootfs.partial");
    remove_dir_if_present(STEP, &partial)?;
    remove_dir_if_present(STEP, &root)?;
    create_dir(STEP, &dir)?;
    progress(&format!("extracting {DNSUTILS_PACKAGES} from {} into {} (about 15 s)", debian::MIRROR, root.display()));
    let mut command = Command::new(MMDEBSTRAP.command);
    command.args(["--quiet", "--variant=extract", &format!("--include={DNSUTILS_PACKAGES}")]);
    for option in ["path-exclude=/usr/share/doc/*", "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/locale/*"]
    {
        command.arg(format!("--dpkgopt={option}"));
    }
    command.arg(debian::RELEASE).arg(&partial).arg(debian::MIRROR);
    run(STEP, &mut command)?;
    rename(STEP, &partial, &root)?;
    write_atomically(STEP, &marker, format!("{DNSUTILS_PACKAGES} extracted by mmdebstrap\n").as_bytes())?;
    Ok(root)
}

/// Builds the workspace's `lab-dns` package and installs the binary, stripped, at
/// `lab_dns_binary`. Cargo decides what to rebuild, so when nothing changed this costs
/// about a second; the image archive is then reused because its stamp records the
/// digests of the binary and libraries it holds.
///
/// The build is the workspace's own: its target directory and its dev profile, with
/// the dependencies' features unified by the `workspace-hack` crate. The server needs
/// the same tokio, hyper, rustls, kube and k8s-openapi as the conformance suite, so on
/// a fresh machine `cargo lab up` compiles them once for both (a release build in a
/// target directory of its own compiled them a second time: 137 s, and 214 s for the
/// suite's build after it), and in CI the build after the workspace's tests finds
/// them compiled. The dev profile optimises dependencies (`opt-level = 1`), which is
/// far more than a DNS server answering a lab's few queries a second needs.
fn ensure_lab_dns_binary(workspace_dir: &Path, cache_dir: &Path, progress: &dyn Fn(&str)) -> Result<PathBuf> {
    const STEP: &str = "building the lab-dns server";
    let destination = lab_dns_binary(cache_dir);
    // An installed `lab` may have outlived its checkout: a built server is then
    // used as it is, and without one the error says what is missing.
    let dns_dir = workspace_dir.join("dns");
    if !dns_dir.join("Cargo.toml").is_file() {
        if destination.is_file() {
            return Ok(destination);
        }
        return Err(ArtifactError::NoDnsSource { step: STEP, dns_dir });
    }
    // Under `cargo run` or `cargo test`, CARGO names the cargo of the toolchain that
    // built the lab; cargo holds no lock once it has started the program, so running it
    // again from here is safe.
    if std::env::var_os("CARGO").is_none() && !system::program_exists("cargo") {
        return Err(ArtifactError::NoCargo { step: STEP });
    }
    let log = destination.with_file_name("build.log");
    let dns_cache = log.parent().expect("the binary is in the cache's lab-dns directory");
    create_dir(STEP, dns_cache)?;
    // Labs before the server was built in the workspace's target directory built it in
    // one of the cache's own, gigabytes nothing reads any more.
    remove_dir_if_present(STEP, &dns_cache.join("target"))?;
    if !destination.is_file() {
        progress(&format!(
            "building the lab-dns server from {} with cargo (about 3 minutes on 2 cores the first time, \
             most of it the dependencies the conformance suite then reuses; log: {})",
            workspace_dir.join("dns").display(),
            log.display()
        ));
    }
    let target_dir = workspace_target_dir(workspace_dir)?;
    // Without the variables of the package that ran the lab, which would make this
    // build and the next one from elsewhere (`cargo lab up`, the fault proof, a test)
    // rebuild each other's dependencies.
    let mut command = system::inner_cargo();
    command.current_dir(workspace_dir).args(["build", "--locked", "--package", "lab-dns"]);
    let started = Instant::now();
    start_log(STEP, &log)?;
    run_logged(STEP, &mut command, &log, "building lab-dns", progress)?;
    let compiled = fs::read_to_string(&log)
        .map_err(io_error(STEP, &log))?
        .lines()
        .any(|line| line.trim_start().starts_with("Compiling "));
    install_stripped(STEP, &target_dir.join("debug").join("lab-dns"), &destination)?;
    if compiled {
        progress(&format!(
            "built the lab-dns server in {}: {}",
            format_elapsed(started.elapsed()),
            destination.display()
        ));
    } else {
        progress(&format!("using cached lab-dns server {} (cargo found it up to date)", destination.display()));
    }
    Ok(destination)
}

/// The workspace's cargo target directory as cargo resolves it (`CARGO_TARGET_DIR`,
/// `build.target-dir` in a cargo config, or `target/` in the workspace).
fn workspace_target_dir(workspace_dir: &Path) -> Result<PathBuf> {
    const STEP: &str = "finding the workspace's cargo target directory";
    #[derive(Deserialize)]
    struct Metadata {
        target_directory: PathBuf,
    }
    let mut command = system::inner_cargo();
    command.current_dir(workspace_dir).args(["metadata", "--format-version", "1", "--no-deps", "--locked"]);
    let output = run(STEP, &mut command)?;
    let metadata: Metadata = serde_json::from_str(&output).map_err(|error| ArtifactError::Command {
        step: STEP,
        failure: system::CommandFailure {
            command: "cargo metadata --format-version 1 --no-deps".to_string(),
            message: format!("unreadable output: {error}"),
        },
    })?;
    Ok(metadata.target_directory)
}

/// Copies `from` to `to` without its symbols when `strip` is installed (the lab-dns
/// binary shrinks from 14 to 11 MB), as it is otherwise.
fn install_stripped(step: &'static str, from: &Path, to: &Path) -> Result<()> {
    if !system::program_exists(STRIP.command) {
        return install_file(step, from, to, 0o755);
    }
    let partial = partial_path(to);
    run(step, Command::new(STRIP.command).arg("-o").arg(&partial).arg(from))?;
    set_mode(step, &partial, 0o755)?;
    rename(step, &partial, to)
}

/// The shared libraries `binary` loads, as `ldd` resolves them on this host, the
/// dynamic loader included; none for a static binary.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    const STEP: &str = "finding the lab-dns server's shared libraries";
    require(STEP, LDD)?;
    let listing = match run(STEP, Command::new(LDD.command).arg(binary)) {
        Err(ArtifactError::Command { failure, .. }) if failure.message.contains("not a dynamic executable") => {
            return Ok(Vec::new())
        }
        other => other?,
    };
    parse_ldd(&listing).map_err(|library| ArtifactError::Missing {
        what: format!("the shared library {library}"),
        path: binary.to_path_buf(),
        hint: "ldd finds no file for it on this host".to_string(),
    })
}

/// The absolute library paths in `ldd` output, e.g. from
/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`. The kernel's vDSO has no file and is left
/// out. A library ldd could not find is the error.
fn parse_ldd(listing: &str) -> Result<Vec<PathBuf>, String> {
    let mut libraries = Vec::new();
    for line in listing.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let (name, resolved) = match line.split_once(" => ") {
            Some((name, resolved)) => (name, resolved),
            None => (line, line),
        };
        if resolved.starts_with("not found") {
            return Err(name.to_string());
        }
        let path = resolved.split(" (").next().unwrap_or_default().trim();
        if path.starts_with('/') {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// Debian's static busybox, downloaded once with `apt-get download` and unpacked
/// with `dpkg-deb` (nothing is installed on the host).
fn ensure_busybox(cache_dir: &Path, progress: &dyn Fn(&str)) -> Result<PathBuf> {
    const STEP: &str = "fetching busybox-static for the web image";
    let dir = cache_dir.join("busybox");
    let busybox = dir.join("busybox");
    if busybox.is_file() {
        return Ok(busybox);
    }
    require(STEP, APT_GET)?;
    require(STEP, DPKG_DEB)?;
    let staging = dir.join(".download");
    empty_dir(STEP, &staging)?;
    progress(&format!("downloading Debian's busybox-static package into {}", dir.display()));
    run(STEP, Command::new(APT_GET.command).args(["download", "busybox-static"]).current_dir(&staging))?;
    let deb = fs::read_dir(&staging)
        .map_err(io_error(STEP, &staging))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|extension| extension == "deb"))
        .ok_or_else(|| ArtifactError::Missing {
            what: "the downloaded busybox-static package".to_string(),
            path: staging.clone(),
            hint: "apt-get download busybox-static wrote no .deb file".to_string(),
        })?;
    let root = staging.join("root");
    run(STEP, Command::new(DPKG_DEB.command).arg("-x").arg(&deb).arg(&root))?;
    install_file(STEP, &root.join("bin/busybox"), &busybox, 0o755)?;
    let package = deb.file_name().unwrap_or_default().to_string_lossy().into_owned();
    write_atomically(STEP, &dir.join("SOURCE"), format!("{package}\n").as_bytes())?;
    remove_dir_if_present(STEP, &staging)?;
    Ok(busybox)
}

/// The applet paths busybox installs links for, e.g. `bin/sh`, `usr/bin/wget`.
fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let listing = run("listing busybox applets", Command::new(busybox).arg("--list-full"))?;
    let mut applets: Vec<String> =
        listing.lines().map(str::trim).filter(|line| !line.is_empty()).map(String::from).collect();
    applets.sort();
    applets.dedup();
    Ok(applets)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::artifacts::test_support::Recorder;

    #[test]
    fn without_the_source_checkout_a_built_server_is_used_and_none_is_a_clear_error() {
        let dirs = tempfile::tempdir().expect("temporary directory");
        let (gone, cache) = (dirs.path().join("checkout"), dirs.path().join("cache"));
        let error = ensure_lab_dns_binary(&gone, &cache, &|_| {}).expect_err("nothing to build from");
        assert!(matches!(error, ArtifactError::NoDnsSource { .. }), "{error}");
        assert!(error.to_string().contains(&format!("{} is gone", gone.join("dns").display())), "{error}");

        let built = lab_dns_binary(&cache);
        fs::create_dir_all(built.parent().unwrap()).unwrap();
        fs::write(&built, b"a built server").unwrap();
        assert_eq!(ensure_lab_dns_binary(&gone, &cache, &|_| {}).expect("the built server"), built);
    }

    #[test]
    fn the_web_image_serves_its_hostname_through_busybox() {
        let applets = vec!["bin/sh".to_string(), "bin/hostname".to_string(), "usr/bin/wget".to_string()];
        let spec = web_image(Path::new("/cache/busybox/busybox"), &applets);
        assert_eq!(spec.reference, images::WEB);
        assert_eq!(spec.entrypoint, ["/bin/busybox", "httpd", "-f", "-v", "-p", "8080", "-h", "/www"]);
        assert_eq!(spec.exposed_ports, ["8080/tcp"]);
        let file = |path: &str| spec.files.iter().find(|file| file.path == path).unwrap().source.clone();
        assert_eq!(file("/bin/busybox"), oci::FileSource::Local(PathBuf::from("/cache/busybox/busybox")));
        assert_eq!(file("/bin/sh"), oci::FileSource::Symlink("/bin/busybox".to_string()));
        assert_eq!(file("/usr/bin/wget"), oci::FileSource::Symlink("/bin/busybox".to_string()));
        let oci::FileSource::Bytes(cgi) = file("/www/cgi-bin/index.cgi") else { panic!("the CGI is inline") };
        let cgi = String::from_utf8(cgi).unwrap();
        assert!(cgi.starts_with("#!/bin/sh\n") && cgi.ends_with("/bin/hostname\n"), "{cgi}");
    }

    #[test]
    fn the_pause_image_runs_the_pause_binary() {
        let spec = pause_image(Path::new("/cache/pause"));
        assert_eq!(spec.reference, images::PAUSE);
        assert_eq!(spec.entrypoint, ["/pause"]);
        assert_eq!(spec.files, [LayerFile::local("/pause", 0o755, "/cache/pause")]);
    }

    #[test]
    fn the_lab_dns_image_holds_the_server_and_its_libraries_at_their_paths() {
        let cache = Path::new("/cache");
        assert_eq!(lab_dns_binary(cache), Path::new("/cache/lab-dns/lab-dns"));
        let libraries =
            [PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"), PathBuf::from("/lib64/ld-linux-x86-64.so.2")];
        let spec = lab_dns_image(&lab_dns_binary(cache), &libraries);
        assert_eq!(spec.reference, images::LAB_DNS);
        assert_eq!(spec.entrypoint, ["/lab-dns"]);
        assert_eq!(
            spec.files,
            [
                LayerFile::local("/lab-dns", 0o755, "/cache/lab-dns/lab-dns"),
                LayerFile::local("/lib/x86_64-linux-gnu/libc.so.6", 0o755, "/lib/x86_64-linux-gnu/libc.so.6"),
                LayerFile::local("/lib64/ld-linux-x86-64.so.2", 0o755, "/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn the_dnsutils_image_holds_the_extracted_tree_and_sleeps() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("usr/bin")).unwrap();
        fs::create_dir_all(root.path().join("bin")).unwrap();
        fs::write(root.path().join("usr/bin/nslookup"), b"elf").unwrap();
        fs::set_permissions(root.path().join("usr/bin/nslookup"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(root.path().join("bin/busybox"), b"elf").unwrap();
        std::os::unix::fs::symlink("busybox", root.path().join("bin/sh")).unwrap();
        let spec = dnsutils_image(root.path()).unwrap();
        assert_eq!(spec.reference, images::DNSUTILS);
        assert_eq!(spec.entrypoint, ["/bin/busybox", "sleep", "infinity"]);
        let paths: Vec<(&str, u32)> = spec.files.iter().map(|file| (file.path.as_str(), file.mode)).collect();
        assert_eq!(
            paths,
            [
                ("/bin/busybox", 0o644),
                ("/bin/sh", 0o777),
                ("/usr/bin/nslookup", 0o755),
                ("/bin/sleep", 0o777),
                ("/bin/cat", 0o777)
            ]
        );
        let sh = spec.files.iter().find(|file| file.path == "/bin/sh").unwrap();
        assert_eq!(sh.source, oci::FileSource::Symlink("busybox".to_string()), "links are kept as they are");
    }

    #[test]
    fn ldd_output_names_each_library_but_the_vdso() {
        let listing = "\tlinux-vdso.so.1 (0x00007ffd5a9d2000)\n\
                       \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f03296b2000)\n\
                       \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f032893e000)\n\
                       \t/lib64/ld-linux-x86-64.so.2 (0x00007f03296e5000)\n";
        assert_eq!(
            parse_ldd(listing).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert_eq!(
            parse_ldd("\tlibssl.so.3 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n"),
            Err("libssl.so.3".into())
        );
        assert_eq!(parse_ldd("\tstatically linked\n"), Ok(Vec::new()));
    }

    #[test]
    fn a_dynamic_binary_needs_libc_and_the_loader() {
        // This test's own executable links against glibc as the lab-dns server does.
        let libraries = shared_libraries(&std::env::current_exe().unwrap()).unwrap();
        let names: Vec<String> =
            libraries.iter().map(|path| path.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert!(names.iter().any(|name| name == "libc.so.6"), "{libraries:?}");
        assert!(names.iter().any(|name| name.starts_with("ld-linux")), "{libraries:?}");
        assert!(libraries.iter().all(|path| path.is_absolute() && path.is_file()), "{libraries:?}");
    }

    #[test]
    fn archives_are_rewritten_only_when_their_inputs_change() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("images/sample-1.tar");
        let mut spec = ImageSpec::new("k8s-lab.local/sample:1");
        spec.files = vec![LayerFile::bytes("/hello", 0o644, "one")];
        let recorder = Recorder::default();
        let progress = |line: &str| recorder.record(line);

        ensure_archive(&spec, &archive, &progress).unwrap();
        let stamp: ImageStamp = serde_json::from_slice(&fs::read(stamp_path(&archive)).unwrap()).unwrap();
        assert_eq!(stamp.reference, spec.reference);
        assert_eq!(stamp.inputs_sha256, oci::inputs_digest(&spec).unwrap());

        fs::write(&archive, b"left alone").unwrap();
        ensure_archive(&spec, &archive, &progress).unwrap();
        assert_eq!(fs::read(&archive).unwrap(), b"left alone", "unchanged inputs do not rewrite the archive");

        spec.files = vec![LayerFile::bytes("/hello", 0o644, "two")];
        ensure_archive(&spec, &archive, &progress).unwrap();
        assert_ne!(fs::read(&archive).unwrap(), b"left alone", "changed inputs rewrite it");
        let lines = recorder.lines();
        assert!(lines[0].starts_with("writing image k8s-lab.local/sample:1"), "{lines:?}");
        assert!(lines[1].starts_with("using cached image k8s-lab.local/sample:1"), "{lines:?}");
        assert!(lines[2].starts_with("writing image"), "{lines:?}");
    }
}
