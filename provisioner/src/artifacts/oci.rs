//! A small writer of OCI image-layout archives: one image, one layer, no registry.
//!
//! The lab has no registry to pull from, so it makes the few images its pods need
//! itself and imports them into every node's containerd with
//! `ctr -n k8s.io images import`. The archive is a tar holding `oci-layout`,
//! `index.json` and `blobs/sha256/<hex>` for the manifest, the config and the gzip
//! layer; the index annotates the manifest with `io.containerd.image.name`, which is
//! the name containerd gives the imported image.
//!
//! The output is deterministic: the same inputs give a byte-identical archive, so a
//! rebuilt image has the same digest and nodes never re-import an unchanged image.
//! Every tar entry has mtime 0 and owner root, entries are sorted by path, and the
//! gzip header carries no time stamp and no file name.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};

use flate2::{Compression, GzBuilder};
use serde::Serialize;
use sha2::{Digest, Sha256};

const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The annotation containerd reads to name an imported image.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for the tag part of the reference.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Bumped whenever the writer's output changes for the same spec, so that the build
/// stamps of archives written by an older writer no longer match.
const WRITER_FORMAT: u32 = 1;

/// What goes into one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// The name containerd gives the image, e.g. `registry.k8s.io/pause:3.2`.
    pub reference: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value` entries of the container's environment.
    pub env: Vec<String>,
    pub working_dir: String,
    /// Documentation only, as in a Dockerfile's EXPOSE: e.g. `8080/tcp`.
    pub exposed_ports: Vec<String>,
    /// The files of the single layer; their parent directories are added implicitly.
    pub files: Vec<LayerFile>,
}

impl ImageSpec {
    /// An image named `reference` with no files, running in `/`.
    pub fn new(reference: impl Into<String>) -> Self {
        ImageSpec {
            reference: reference.into(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            env: Vec::new(),
            working_dir: "/".to_string(),
            exposed_ports: Vec::new(),
            files: Vec::new(),
        }
    }
}

/// One file of the layer, at an absolute path inside the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFile {
    /// Absolute, e.g. `/bin/busybox`.
    pub path: String,
    /// Permission bits, e.g. `0o755`; ignored for symbolic links.
    pub mode: u32,
    pub source: FileSource,
}

/// Where a layer file's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    Bytes(Vec<u8>),
    /// A file on the host, read when the archive is written.
    Local(PathBuf),
    /// A symbolic link to this target.
    Symlink(String),
}

impl LayerFile {
    pub fn bytes(path: impl Into<String>, mode: u32, content: impl Into<Vec<u8>>) -> Self {
        LayerFile { path: path.into(), mode, source: FileSource::Bytes(content.into()) }
    }

    pub fn local(path: impl Into<String>, mode: u32, local: impl Into<PathBuf>) -> Self {
        LayerFile { path: path.into(), mode, source: FileSource::Local(local.into()) }
    }

    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        LayerFile { path: path.into(), mode: 0o777, source: FileSource::Symlink(target.into()) }
    }
}

/// Every regular file and symbolic link below `root`, as layer files at the same
/// paths inside the image with their permission bits; directories come implicitly
/// from the files' paths, and device nodes, sockets and FIFOs are left out (an image
/// of extracted packages has none that a container needs). Sorted by path, so the
/// result does not depend on the order the filesystem lists entries in.
pub fn tree_files(root: &Path) -> std::io::Result<Vec<LayerFile>> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(directory) = pending.pop() {
        for entry in fs::read_dir(&directory)? {
            let entry = entry?;
            let local = entry.path();
            let metadata = fs::symlink_metadata(&local)?;
            let inside = Path::new("/").join(local.strip_prefix(root).expect("walked below the root"));
            let inside = inside.to_string_lossy().into_owned();
            if metadata.file_type().is_symlink() {
                let target = fs::read_link(&local)?.to_string_lossy().into_owned();
                files.push(LayerFile::symlink(inside, target));
            } else if metadata.is_dir() {
                pending.push(local);
            } else if metadata.is_file() {
                files.push(LayerFile::local(inside, metadata.permissions().mode() & 0o7777, local));
            }
        }
    }
    files.sort_by(|left, right| left.path.cmp(&right.path));
    Ok(files)
}

/// The digests of a written image, as `sha256:<hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageDigests {
    pub manifest: String,
    pub config: String,
    /// The compressed layer blob.
    pub layer: String,
    /// The uncompressed layer tar, as the config's `rootfs.diff_ids` lists it.
    pub diff_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("image {reference}: layer path {path:?} {reason}")]
    InvalidPath { reference: String, path: String, reason: &'static str },
    #[error("image {reference}: layer path {path} is given twice")]
    DuplicatePath { reference: String, path: String },
    #[error("image {reference}: layer path {path} is both a file and the parent directory of another file")]
    FileIsDirectory { reference: String, path: String },
    #[error("image {reference}: cannot read {} for {path}: {source}", local.display())]
    ReadSource { reference: String, path: String, local: PathBuf, source: std::io::Error },
    #[error("image {reference}: cannot write the archive {}: {source}", archive.display())]
    Write { reference: String, archive: PathBuf, source: std::io::Error },
}

/// Writes the archive of `spec` to `archive` (through a temporary file renamed into
/// place, so a reader never sees half an archive) and returns its digests.
pub fn write_archive(spec: &ImageSpec, archive: &Path) -> Result<ImageDigests, OciError> {
    let (bytes, digests) = archive_bytes(spec)?;
    let write_error =
        |source| OciError::Write { reference: spec.reference.clone(), archive: archive.to_path_buf(), source };
    if let Some(parent) = archive.parent() {
        fs::create_dir_all(parent).map_err(write_error)?;
    }
    let partial = partial_path(archive);
    fs::write(&partial, &bytes).map_err(write_error)?;
    fs::rename(&partial, archive).map_err(write_error)?;
    Ok(digests)
}

/// The whole archive of `spec` in memory (the lab's images are a few megabytes).
pub fn archive_bytes(spec: &ImageSpec) -> Result<(Vec<u8>, ImageDigests), OciError> {
    let entries = layer_entries(spec)?;
    let layer = layer_tar(spec, &entries)?;
    let diff_id = sha256_digest(&layer);
    let compressed = gzip(&layer);
    let layer_digest = sha256_digest(&compressed);

    let config = to_json(&ImageConfig {
        architecture: "amd64",
        os: "linux",
        config: RuntimeConfig {
            env: &spec.env,
            entrypoint: &spec.entrypoint,
            cmd: &spec.cmd,
            working_dir: &spec.working_dir,
            exposed_ports: spec.exposed_ports.iter().map(|port| (port.as_str(), EmptyObject {})).collect(),
        },
        rootfs: RootFs { kind: "layers", diff_ids: vec![diff_id.clone()] },
        history: vec![History { created_by: "k8s-lab provisioner (artifacts::oci)" }],
    });
    let config_digest = sha256_digest(&config);

    let manifest = to_json(&Manifest {
        schema_version: 2,
        media_type: MEDIA_TYPE_MANIFEST,
        config: Descriptor::of(MEDIA_TYPE_CONFIG, &config),
        layers: vec![Descriptor::of(MEDIA_TYPE_LAYER, &compressed)],
    });
    let manifest_digest = sha256_digest(&manifest);

    let annotations = BTreeMap::from([
        (ANNOTATION_CONTAINERD_NAME, spec.reference.clone()),
        (ANNOTATION_REF_NAME, tag_of(&spec.reference).to_string()),
    ]);
    let index = to_json(&Index {
        schema_version: 2,
        media_type: MEDIA_TYPE_INDEX,
        manifests: vec![ManifestDescriptor {
            descriptor: Descriptor::of(MEDIA_TYPE_MANIFEST, &manifest),
            platform: Platform { architecture: "amd64", os: "linux" },
            annotations,
        }],
    });

    let mut blobs = BTreeMap::new();
    for blob in [&config, &compressed, &manifest] {
        blobs.insert(format!("blobs/sha256/{}", sha256_hex(blob)), blob.as_slice());
    }
    let mut outer = tar::Builder::new(Vec::new());
    let files = [("oci-layout", OCI_LAYOUT.as_bytes()), ("index.json", index.as_slice())]
        .into_iter()
        .chain(blobs.iter().map(|(name, blob)| (name.as_str(), *blob)));
    for (name, content) in files {
        let mut header = fixed_header(tar::EntryType::Regular, 0o644, content.len() as u64);
        append(&mut outer, spec, &mut header, name, content)?;
    }
    let bytes = finish(outer, spec)?;
    Ok((bytes, ImageDigests { manifest: manifest_digest, config: config_digest, layer: layer_digest, diff_id }))
}

/// A digest of everything the archive is made from (the spec and the content of
/// every file), cheap to compute without compressing: the build keeps it in a stamp
/// and rewrites the archive only when it changes.
pub fn inputs_digest(spec: &ImageSpec) -> Result<String, OciError> {
    #[derive(Serialize)]
    struct Inputs<'a> {
        writer_format: u32,
        reference: &'a str,
        entrypoint: &'a [String],
        cmd: &'a [String],
        env: &'a [String],
        working_dir: &'a str,
        exposed_ports: &'a [String],
        files: Vec<(String, u32, String)>,
    }
    let mut files = Vec::new();
    for file in &spec.files {
        let content = match &file.source {
            FileSource::Symlink(target) => format!("symlink:{target}"),
            _ => format!("sha256:{}", sha256_hex(&read_source(spec, file)?)),
        };
        files.push((file.path.clone(), file.mode, content));
    }
    let inputs = Inputs {
        writer_format: WRITER_FORMAT,
        reference: &spec.reference,
        entrypoint: &spec.entrypoint,
        cmd: &spec.cmd,
        env: &spec.env,
        working_dir: &spec.working_dir,
        exposed_ports: &spec.exposed_ports,
        files,
    };
    Ok(sha256_hex(&to_json(&inputs)))
}

const OCI_LAYOUT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

/// One entry of the layer tar, by its path without the leading `/`.
enum LayerEntry<'a> {
    Directory,
    File(&'a LayerFile),
}

/// The layer's entries sorted so that every directory precedes its content: the sort
/// key of a directory is its path with a trailing `/`, which every child extends.
fn layer_entries(spec: &ImageSpec) -> Result<Vec<(String, LayerEntry<'_>)>, OciError> {
    let mut files = BTreeMap::new();
    for file in &spec.files {
        let relative = relative_path(spec, &file.path)?;
        if files.insert(relative.clone(), file).is_some() {
            return Err(OciError::DuplicatePath { reference: spec.reference.clone(), path: file.path.clone() });
        }
    }
    let mut directories = BTreeSet::new();
    for relative in files.keys() {
        let mut parent = Path::new(relative).parent();
        while let Some(directory) = parent.filter(|directory| !directory.as_os_str().is_empty()) {
            directories.insert(directory.to_string_lossy().into_owned());
            parent = directory.parent();
        }
    }
    if let Some(clash) = directories.iter().find(|directory| files.contains_key(*directory)) {
        return Err(OciError::FileIsDirectory { reference: spec.reference.clone(), path: format!("/{clash}") });
    }
    let mut entries: Vec<(String, LayerEntry)> = directories
        .into_iter()
        .map(|directory| (directory, LayerEntry::Directory))
        .chain(files.into_iter().map(|(relative, file)| (relative, LayerEntry::File(file))))
        .collect();
    let sort_key = |(path, entry): &(String, LayerEntry)| match entry {
        LayerEntry::Directory => format!("{path}/"),
        LayerEntry::File(_) => path.clone(),
    };
    entries.sort_by_cached_key(sort_key);
    Ok(entries)
}

/// `/bin/busybox` -> `bin/busybox`, refusing anything that is not a plain absolute path.
fn relative_path(spec: &ImageSpec, path: &str) -> Result<String, OciError> {
    let invalid = |reason| OciError::InvalidPath { reference: spec.reference.clone(), path: path.to_string(), reason };
    if !path.starts_with('/') {
        return Err(invalid("must be absolute"));
    }
    if path.ends_with('/') {
        return Err(invalid("must name a file, not end with /"));
    }
    let mut parts = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::RootDir => {}
            Component::Normal(part) => parts.push(part.to_str().ok_or_else(|| invalid("must be UTF-8"))?),
            _ => return Err(invalid("must not contain . or .. components")),
        }
    }
    if parts.is_empty() {
        return Err(invalid("must name a file below /"));
    }
    Ok(parts.join("/"))
}

fn layer_tar(spec: &ImageSpec, entries: &[(String, LayerEntry)]) -> Result<Vec<u8>, OciError> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, entry) in entries {
        match entry {
            LayerEntry::Directory => {
                let mut header = fixed_header(tar::EntryType::Directory, 0o755, 0);
                append(&mut builder, spec, &mut header, path, &[][..])?;
            }
            LayerEntry::File(LayerFile { source: FileSource::Symlink(target), .. }) => {
                let mut header = fixed_header(tar::EntryType::Symlink, 0o777, 0);
                builder.append_link(&mut header, path, target).map_err(|source| tar_error(spec, source))?;
            }
            LayerEntry::File(file) => {
                let content = read_source(spec, file)?;
                let mut header = fixed_header(tar::EntryType::Regular, file.mode, content.len() as u64);
                append(&mut builder, spec, &mut header, path, content.as_slice())?;
            }
        }
    }
    finish(builder, spec)
}

fn read_source(spec: &ImageSpec, file: &LayerFile) -> Result<Vec<u8>, OciError> {
    match &file.source {
        FileSource::Bytes(bytes) => Ok(bytes.clone()),
        FileSource::Local(local) => fs::read(local).map_err(|source| OciError::ReadSource {
            reference: spec.reference.clone(),
            path: file.path.clone(),
            local: local.clone(),
            source,
        }),
        FileSource::Symlink(target) => Ok(target.as_bytes().to_vec()),
    }
}

/// A ustar header with everything but the path fixed: owner root, mtime 0.
fn fixed_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    // Setting a short ASCII name cannot fail; the results are ignored on purpose.
    let _ = header.set_username("root");
    let _ = header.set_groupname("root");
    header
}

fn append(
    builder: &mut tar::Builder<Vec<u8>>,
    spec: &ImageSpec,
    header: &mut tar::Header,
    path: &str,
    content: &[u8],
) -> Result<(), OciError> {
    builder.append_data(header, path, content).map_err(|source| tar_error(spec, source))
}

fn finish(builder: tar::Builder<Vec<u8>>, spec: &ImageSpec) -> Result<Vec<u8>, OciError> {
    builder.into_inner().map_err(|source| tar_error(spec, source))
}

/// Building a tar in memory fails only on paths the tar format cannot hold.
fn tar_error(spec: &ImageSpec, source: std::io::Error) -> OciError {
    OciError::Write { reference: spec.reference.clone(), archive: PathBuf::from("<memory>"), source }
}

/// Gzip with a fixed header: no time stamp, no file name, Unix as the OS byte.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzBuilder::new().mtime(0).operating_system(3).write(Vec::new(), Compression::best());
    // Writing into a Vec cannot fail.
    encoder.write_all(data).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

/// The tag of a reference: `registry.k8s.io/pause:3.2` -> `3.2`, `latest` when none.
fn tag_of(reference: &str) -> &str {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    last.split_once(':').map(|(_, tag)| tag).unwrap_or("latest")
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// Compact JSON of the document structs below. They hold only strings, numbers and
/// string-keyed maps, which serde_json always serializes.
fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("image documents serialize to JSON")
}

#[derive(Serialize)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: &'static str,
    digest: String,
    size: u64,
}

impl Descriptor {
    fn of(media_type: &'static str, blob: &[u8]) -> Self {
        Descriptor { media_type, digest: sha256_digest(blob), size: blob.len() as u64 }
    }
}

#[derive(Serialize)]
struct Index {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'static str,
    manifests: Vec<ManifestDescriptor>,
}

#[derive(Serialize)]
struct ManifestDescriptor {
    #[serde(flatten)]
    descriptor: Descriptor,
    platform: Platform,
    annotations: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
struct Platform {
    architecture: &'static str,
    os: &'static str,
}

#[derive(Serialize)]
struct Manifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'static str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Serialize)]
struct ImageConfig<'a> {
    architecture: &'static str,
    os: &'static str,
    config: RuntimeConfig<'a>,
    rootfs: RootFs,
    history: Vec<History>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RuntimeConfig<'a> {
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    env: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    entrypoint: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    cmd: &'a [String],
    working_dir: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    exposed_ports: BTreeMap<&'a str, EmptyObject>,
}

/// Serializes as `{}`, the value of each `ExposedPorts` key.
#[derive(Serialize)]
struct EmptyObject {}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
struct History {
    created_by: &'static str,
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use serde_json::Value;

    use super::*;

    fn sample() -> ImageSpec {
        let mut spec = ImageSpec::new("k8s-lab.local/sample:1");
        spec.entrypoint = vec!["/bin/tool".into(), "serve".into()];
        spec.env = vec!["PATH=/bin".into()];
        spec.exposed_ports = vec!["8080/tcp".into()];
        spec.files = vec![
            LayerFile::bytes("/www/cgi-bin/index.cgi", 0o755, "#!/bin/sh\necho hi\n"),
            LayerFile::bytes("/bin/tool", 0o755, vec![0x7f, b'E', b'L', b'F', 1, 2, 3]),
            LayerFile::symlink("/bin/sh", "/bin/tool"),
        ];
        spec
    }

    /// The archive's entries by name.
    fn entries(tar_bytes: &[u8]) -> BTreeMap<String, (tar::Header, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar_bytes);
        let mut entries = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            entries.insert(name, (entry.header().clone(), content));
        }
        entries
    }

    fn blob<'a>(entries: &'a BTreeMap<String, (tar::Header, Vec<u8>)>, digest: &str) -> &'a [u8] {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        &entries.get(&format!("blobs/sha256/{hex}")).unwrap_or_else(|| panic!("no blob {digest}")).1
    }

    fn json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn every_digest_names_the_blob_it_points_to() {
        let (bytes, digests) = archive_bytes(&sample()).unwrap();
        let entries = entries(&bytes);
        assert_eq!(entries["oci-layout"].1, br#"{"imageLayoutVersion":"1.0.0"}"#);
        for (name, (_, content)) in &entries {
            if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                assert_eq!(sha256_hex(content), hex, "blob {name} is stored under its own digest");
            }
        }
        let index = json(&entries["index.json"].1);
        assert_eq!(index["mediaType"], MEDIA_TYPE_INDEX);
        let descriptor = &index["manifests"][0];
        assert_eq!(descriptor["digest"], digests.manifest);
        let manifest_bytes = blob(&entries, &digests.manifest);
        assert_eq!(descriptor["size"], manifest_bytes.len());

        let manifest = json(manifest_bytes);
        assert_eq!(manifest["config"]["digest"], digests.config);
        assert_eq!(manifest["config"]["size"], blob(&entries, &digests.config).len());
        assert_eq!(manifest["layers"][0]["digest"], digests.layer);
        assert_eq!(manifest["layers"][0]["size"], blob(&entries, &digests.layer).len());
        assert_eq!(manifest["layers"][0]["mediaType"], MEDIA_TYPE_LAYER);
    }

    #[test]
    fn diff_id_is_the_digest_of_the_uncompressed_layer() {
        let (bytes, digests) = archive_bytes(&sample()).unwrap();
        let entries = entries(&bytes);
        let layer = gunzip(blob(&entries, &digests.layer));
        assert_eq!(digests.diff_id, sha256_digest(&layer));
        let config = json(blob(&entries, &digests.config));
        assert_eq!(config["rootfs"]["diff_ids"][0], digests.diff_id);
    }

    #[test]
    fn config_carries_the_runtime_settings() {
        let (bytes, digests) = archive_bytes(&sample()).unwrap();
        let config = json(blob(&entries(&bytes), &digests.config));
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["os"], "linux");
        assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/bin/tool", "serve"]));
        assert_eq!(config["config"]["Env"], serde_json::json!(["PATH=/bin"]));
        assert_eq!(config["config"]["WorkingDir"], "/");
        assert_eq!(config["config"]["ExposedPorts"], serde_json::json!({"8080/tcp": {}}));
        assert!(config["config"].get("Cmd").is_none(), "an empty Cmd is left out");
    }

    #[test]
    fn layer_holds_sorted_entries_with_parents_owned_by_root_at_time_zero() {
        let (bytes, digests) = archive_bytes(&sample()).unwrap();
        let layer = gunzip(blob(&entries(&bytes), &digests.layer));
        let mut archive = tar::Archive::new(layer.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            assert_eq!((header.uid().unwrap(), header.gid().unwrap(), header.mtime().unwrap()), (0, 0, 0));
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let kind = header.entry_type();
            let detail = if kind.is_symlink() {
                format!("-> {}", entry.link_name().unwrap().unwrap().display())
            } else {
                format!("{:o}", header.mode().unwrap())
            };
            seen.push(format!("{name} {detail}"));
        }
        assert_eq!(
            seen,
            [
                "bin 755",
                "bin/sh -> /bin/tool",
                "bin/tool 755",
                "www 755",
                "www/cgi-bin 755",
                "www/cgi-bin/index.cgi 755"
            ]
        );
    }

    #[test]
    fn two_writes_are_byte_identical() {
        let directory = tempfile::tempdir().unwrap();
        let (first, second) = (directory.path().join("first.tar"), directory.path().join("second.tar"));
        let mut reordered = sample();
        reordered.files.reverse();
        let first_digests = write_archive(&sample(), &first).unwrap();
        let second_digests = write_archive(&reordered, &second).unwrap();
        assert_eq!(fs::read(&first).unwrap(), fs::read(&second).unwrap());
        assert_eq!(first_digests, second_digests);
        assert!(!partial_path(&first).exists(), "the temporary file was renamed into place");
    }

    #[test]
    fn index_annotations_name_the_reference() {
        let mut spec = sample();
        spec.reference = "registry.k8s.io/pause:3.2".into();
        let (bytes, _) = archive_bytes(&spec).unwrap();
        let index = json(&entries(&bytes)["index.json"].1);
        let annotations = &index["manifests"][0]["annotations"];
        assert_eq!(annotations[ANNOTATION_CONTAINERD_NAME], "registry.k8s.io/pause:3.2");
        assert_eq!(annotations[ANNOTATION_REF_NAME], "3.2");
        assert_eq!(index["manifests"][0]["platform"], serde_json::json!({"architecture": "amd64", "os": "linux"}));
    }

    #[test]
    fn local_files_are_read_when_writing() {
        let directory = tempfile::tempdir().unwrap();
        let local = directory.path().join("pause");
        fs::write(&local, b"binary").unwrap();
        let mut spec = ImageSpec::new("registry.k8s.io/pause:3.2");
        spec.files = vec![LayerFile::local("/pause", 0o755, &local)];
        let before = inputs_digest(&spec).unwrap();
        let (bytes, digests) = archive_bytes(&spec).unwrap();
        let layer = gunzip(blob(&entries(&bytes), &digests.layer));
        assert_eq!(entries(&layer)["pause"].1, b"binary");

        fs::write(&local, b"binary, rebuilt").unwrap();
        assert_ne!(inputs_digest(&spec).unwrap(), before, "the inputs digest follows the file's content");

        spec.files = vec![LayerFile::local("/pause", 0o755, directory.path().join("missing"))];
        let error = archive_bytes(&spec).unwrap_err().to_string();
        assert!(error.contains("cannot read") && error.contains("missing"), "{error}");
    }

    #[test]
    fn inputs_digest_follows_every_setting() {
        let base = inputs_digest(&sample()).unwrap();
        assert_eq!(inputs_digest(&sample()).unwrap(), base);
        let mut changed = sample();
        changed.cmd = vec!["-v".into()];
        assert_ne!(inputs_digest(&changed).unwrap(), base);
        let mut changed = sample();
        changed.files[0].mode = 0o644;
        assert_ne!(inputs_digest(&changed).unwrap(), base);
        let mut changed = sample();
        changed.reference = "k8s-lab.local/sample:2".into();
        assert_ne!(inputs_digest(&changed).unwrap(), base);
    }

    #[test]
    fn bad_layer_paths_are_refused() {
        let with_files = |files: Vec<LayerFile>| {
            let mut spec = ImageSpec::new("k8s-lab.local/bad:1");
            spec.files = files;
            archive_bytes(&spec).unwrap_err().to_string()
        };
        assert!(with_files(vec![LayerFile::bytes("bin/x", 0o644, "")]).contains("must be absolute"));
        assert!(with_files(vec![LayerFile::bytes("/bin/../x", 0o644, "")]).contains(".."));
        assert!(with_files(vec![LayerFile::bytes("/", 0o644, "")]).contains("must name a file"));
        assert!(
            with_files(vec![LayerFile::bytes("/x", 0o644, ""), LayerFile::bytes("/x", 0o644, "")]).contains("twice")
        );
        assert!(with_files(vec![LayerFile::bytes("/bin", 0o644, ""), LayerFile::bytes("/bin/sh", 0o755, "")])
            .contains("both a file and the parent directory"));
    }

    #[test]
    fn tag_defaults_to_latest() {
        assert_eq!(tag_of("registry.k8s.io/pause:3.2"), "3.2");
        assert_eq!(tag_of("localhost:5000/web"), "latest");
        assert_eq!(tag_of("web"), "latest");
    }
}
