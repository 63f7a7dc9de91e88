//! The task world `afm-data` re-solves records in: `afm-data` knows no
//! task world (it takes a [`afm_data::Resolver`]); the recipe injects
//! `afm-tasks`' scripted agents.

use afm_data::{Manifest, PrepareConfig, Progress};

/// The task world of `--augment`'s `resolve` rows: `afm-tasks`' scripted
/// agents re-solve generated records (their `meta` names the task) with
/// new inputs. `afm-data` knows no task world; the pipeline (and `afm prepare`) inject this one.
pub struct TaskWorld;

impl afm_data::Resolver for TaskWorld {
    fn can_resolve(&self, t: &afm_format::Trajectory) -> bool {
        afm_tasks::source_task(t).is_some()
    }

    fn resolve(&self, t: &afm_format::Trajectory, seed: u64) -> Option<afm_format::Trajectory> {
        afm_tasks::resolve_record(t, seed)
    }
}

/// `afm_data::prepare_with` with [`TaskWorld`]: how every verb prepares data
/// (`afm prepare` and the pipeline's prepare stages).
pub fn prepare_in_task_world(
    cfg: &PrepareConfig,
    progress: &(dyn Fn(Progress) + Sync),
) -> anyhow::Result<Manifest> {
    afm_data::prepare_with(cfg, progress, Some(&TaskWorld))
}

#[cfg(test)]
mod tests {
    use super::*;
    use afm_data::{apply, Transform};
    use afm_data::{Format, Resolver};

    /// A scripted record as `afm-data` reads it.
    fn scripted(task: &afm_tasks::Task) -> afm_format::Trajectory {
        let tr = afm_tasks::solve(task, &afm_tasks::AgentConfig::default()).unwrap();
        let v = serde_json::to_value(&tr).unwrap();
        afm_data::ingest::convert(&v, Format::Native, &Default::default(), "x").unwrap()
    }

    #[test]
    fn resolve_makes_a_new_verified_task() {
        let task = afm_tasks::generate(5, 1, 0).unwrap().0.remove(0);
        let src = scripted(&task);
        assert!(TaskWorld.can_resolve(&src));
        assert_eq!(afm_tasks::source_task(&src).unwrap().id, task.id);
        let a = apply(&src, Transform::Resolve(1), Some(&TaskWorld)).unwrap();
        assert_ne!(a.task, src.task);
        assert_eq!(a.success, Some(true));
        assert_eq!(a.meta.as_ref().unwrap()["augment"]["transform"], "resolve");
        assert_eq!(a.meta.as_ref().unwrap()["split"], "train");
        // Records without re-solve metadata are not eligible.
        let mut bare = src.clone();
        bare.meta = None;
        assert!(!TaskWorld.can_resolve(&bare));
        assert!(apply(&bare, Transform::Resolve(1), Some(&TaskWorld)).is_none());
    }

    /// The injected re-solver gives exactly what `afm-data` made before it
    /// stopped depending on `afm-tasks`: the re-solved trajectory's native
    /// JSON read back by the native reader.
    #[test]
    fn task_world_resolves_as_before() {
        let (tasks, _) = afm_tasks::generate(17, 120, 0).unwrap();
        let mut solved = 0;
        for (k, task) in tasks.iter().enumerate() {
            let src = scripted(task);
            let seed = k as u64 * 7919;
            let old = afm_tasks::perturb_and_solve(&afm_tasks::source_task(&src).unwrap(), seed)
                .map(|(_, tr)| {
                    let v = serde_json::to_value(&tr).unwrap();
                    afm_data::ingest::convert(&v, Format::Native, &Default::default(), &src.id)
                        .unwrap()
                });
            let new = TaskWorld.resolve(&src, seed);
            assert_eq!(new, old, "{}", task.id);
            solved += usize::from(new.is_some());
        }
        assert!(solved > 100, "{solved}");
    }
}
