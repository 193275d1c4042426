//! Follows the config file, the TLS certificate and key, and the prompt files of
//! `prompts_dir` on disk, and reloads when one of them changes.
//!
//! Watches each file's directory rather than the file: editors save by writing a temporary
//! file and renaming it over the original, and Kubernetes updates a mounted ConfigMap or
//! Secret by swapping the `..data` symlink next to the files; both replace the inode a watch
//! on the file itself would follow. An event names a file; events for other files in those
//! directories are ignored, except in `prompts_dir`, where any `*.yaml` / `*.yml` file that
//! appears, changes or goes counts. A burst of events (an editor's write, rename and chmod) becomes
//! one reload after [`DEBOUNCE`] of quiet, and a reload whose bytes did not change is a no-op.
//!
//! Owns: the [`FileWatcher`]. Must not: reload on its own terms: it calls the one reload path.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Host, Trigger, reload};
use crate::config::ConfigSource;
use crate::runtime::Runtime;

/// Quiet time after the last event before reloading.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// The running watcher; dropping it stops watching.
#[derive(Debug)]
pub struct FileWatcher {
    task: JoinHandle<()>,
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What an event must name to count, shared with notify's thread.
type Names = Arc<ArcSwap<Wanted>>;

#[derive(Debug, Default)]
struct Wanted {
    /// File names of the config and TLS files.
    names: HashSet<OsString>,
    /// The prompt directories, as configured and resolved: any prompt file in them counts.
    prompt_dirs: HashSet<PathBuf>,
}

/// Starts watching the config file and the TLS files the active config names. `None` when
/// the config does not come from a file, or the platform cannot watch (both logged).
pub fn start<H: Host>(host: &Arc<H>) -> Option<FileWatcher> {
    match host.runtime().reloader().source() {
        Some(ConfigSource::File(_)) => {}
        Some(ConfigSource::Embedded) => {
            tracing::info!(
                "the config is the embedded default, not a file: nothing to watch for changes \
                 (write config/weir.yaml or pass --config to reload on edit)"
            );
            return None;
        }
        None => return None,
    }
    let names: Names = Arc::default();
    let (wake, woken) = mpsc::channel(1);
    let seen = Arc::clone(&names);
    let watcher = notify::recommended_watcher(move |event: notify::Result<Event>| match event {
        // A full channel means a reload is already due; this event adds nothing.
        Ok(event) if is_relevant(&event, &seen.load()) => drop(wake.try_send(())),
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "config file watcher"),
    });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch the config file; reload with SIGHUP or POST /admin/reload");
            return None;
        }
    };
    let mut watched = HashSet::new();
    let (files, prompt_dirs) = wanted_files(host.runtime());
    follow(&mut watcher, &mut watched, &names, &files, &prompt_dirs);
    let task = tokio::spawn(run(Arc::downgrade(host), woken, watcher, watched, names));
    Some(FileWatcher { task })
}

/// Waits for events, lets them settle, reloads, and follows files the new config names.
async fn run<H: Host>(
    host: Weak<H>,
    mut woken: mpsc::Receiver<()>,
    mut watcher: RecommendedWatcher,
    mut watched: HashSet<PathBuf>,
    names: Names,
) {
    while woken.recv().await.is_some() {
        loop {
            match tokio::time::timeout(DEBOUNCE, woken.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_quiet) => break,
            }
        }
        let Some(host) = host.upgrade() else { return };
        let _ = reload(&host, Trigger::File).await;
        let (files, prompt_dirs) = wanted_files(host.runtime());
        drop(host);
        // Adding a watch is a quick syscall, but notify waits on its own thread for it.
        let shared = Arc::clone(&names);
        let followed = tokio::task::spawn_blocking(move || {
            follow(&mut watcher, &mut watched, &shared, &files, &prompt_dirs);
            (watcher, watched)
        })
        .await;
        match followed {
            Ok(parts) => (watcher, watched) = parts,
            Err(err) => return tracing::warn!(error = %err, "config file watcher stopped"),
        }
    }
}

/// The config file and the active TLS certificate and key; the active `prompts_dir`.
fn wanted_files(state: &Runtime) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut files: Vec<PathBuf> =
        state.reloader().source().and_then(ConfigSource::path).into_iter().map(Path::to_path_buf).collect();
    let snapshot = state.snapshot();
    if let Some(tls) = &snapshot.config.server.tls {
        files.extend([tls.cert.clone(), tls.key.clone()]);
    }
    (files, snapshot.config.prompts.dir.iter().cloned().collect())
}

/// Watches the directories of `files` (and of their symlink targets), stops watching
/// directories no longer needed, and publishes the names events must match.
fn follow(
    watcher: &mut RecommendedWatcher,
    watched: &mut HashSet<PathBuf>,
    names: &Names,
    files: &[PathBuf],
    prompt_dirs: &[PathBuf],
) {
    let mut dirs = HashSet::new();
    let mut wanted_names = HashSet::new();
    let mut wanted_prompt_dirs = HashSet::new();
    for dir in prompt_dirs {
        let resolved = std::fs::canonicalize(dir).ok();
        for path in std::iter::once(dir).chain(resolved.as_ref()) {
            let path: PathBuf = path.components().collect();
            dirs.insert(path.clone());
            wanted_prompt_dirs.insert(path);
        }
    }
    for file in files {
        let resolved = std::fs::canonicalize(file).ok();
        for path in std::iter::once(file).chain(resolved.as_ref()) {
            let Some(name) = path.file_name() else { continue };
            wanted_names.insert(name.to_owned());
            dirs.insert(directory_of(path));
        }
    }
    names.store(Arc::new(Wanted { names: wanted_names, prompt_dirs: wanted_prompt_dirs }));
    for dir in watched.difference(&dirs).cloned().collect::<Vec<_>>() {
        let _ = watcher.unwatch(&dir);
        watched.remove(&dir);
    }
    for dir in dirs {
        if watched.contains(&dir) {
            continue;
        }
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                watched.insert(dir);
            }
            Err(err) => tracing::warn!(dir = %dir.display(), error = %err, "cannot watch for config changes"),
        }
    }
}

fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether `event` may have changed one of the files: a write, create, rename or removal
/// naming one of them or a prompt file of a prompt directory, or Kubernetes' `..data` swap.
/// Reads (including the reload's own) and other files in the directory do not count.
fn is_relevant(event: &Event, wanted: &Wanted) -> bool {
    let changes = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    changes
        && event.paths.iter().any(|path| {
            path.file_name().is_some_and(|name| {
                let name_text = name.to_string_lossy();
                let prompt_file = !name_text.starts_with('.')
                    && (name_text.ends_with(".yaml") || name_text.ends_with(".yml"))
                    && path
                        .parent()
                        .is_some_and(|dir| wanted.prompt_dirs.contains(&dir.components().collect::<PathBuf>()));
                wanted.names.contains(name) || name_text.starts_with("..") || prompt_file
            })
        })
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, ModifyKind, RenameMode};

    use super::*;

    fn event(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn any_prompt_file_of_a_prompt_directory_counts() {
        let wanted = Wanted { names: HashSet::new(), prompt_dirs: [PathBuf::from("/etc/weir/prompts")].into() };
        let write = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert!(is_relevant(&event(write, "/etc/weir/prompts/support.yaml"), &wanted));
        assert!(is_relevant(
            &event(EventKind::Remove(notify::event::RemoveKind::File), "/etc/weir/prompts/a.yml"),
            &wanted
        ));
        assert!(!is_relevant(&event(write, "/etc/weir/prompts/.support.yaml.swp"), &wanted));
        assert!(!is_relevant(&event(write, "/etc/weir/prompts/notes.txt"), &wanted));
        assert!(!is_relevant(&event(write, "/etc/weir/other/support.yaml"), &wanted));
    }

    #[test]
    fn only_changes_to_the_watched_files_count() {
        let names: HashSet<OsString> = ["weir.yaml", "cert.pem"].into_iter().map(OsString::from).collect();
        let names = Wanted { names, prompt_dirs: HashSet::new() };
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(is_relevant(&event(rename, "/etc/weir/weir.yaml"), &names));
        assert!(is_relevant(&event(EventKind::Create(CreateKind::File), "/etc/weir/..data"), &names));
        assert!(is_relevant(&event(EventKind::Access(AccessKind::Close(AccessMode::Write)), "/t/cert.pem"), &names));
        assert!(!is_relevant(&event(EventKind::Access(AccessKind::Close(AccessMode::Read)), "/t/weir.yaml"), &names));
        assert!(!is_relevant(&event(EventKind::Access(AccessKind::Open(AccessMode::Any)), "/t/weir.yaml"), &names));
        assert!(!is_relevant(&event(rename, "/etc/weir/.weir.yaml.swp"), &names));
        assert!(!is_relevant(&event(EventKind::Modify(ModifyKind::Any), "/etc/weir/other.yaml"), &names));
    }

    #[test]
    fn a_bare_file_name_lives_in_the_current_directory() {
        assert_eq!(directory_of(Path::new("weir.yaml")), PathBuf::from("."));
        assert_eq!(directory_of(Path::new("config/weir.yaml")), PathBuf::from("config"));
    }
}
