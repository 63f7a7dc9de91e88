//! Per-agent teachers: each loss position is distilled from the teacher of
//! the agent that owns its target (`owners` role id -> agent name ->
//! teacher checkpoint). Teachers may have a different role vocabulary from
//! the student: token and role ids are mapped by agent name, and every id a
//! teacher must read has to exist in its vocabulary (clear error otherwise).
//! Output columns the teacher lacks get [`MISSING_LOGIT`].

use crate::data::{make_batch, Batch};
use crate::loss::MISSING_LOGIT;
use crate::teacher_cache::{CacheIndex, CacheWriter, TeacherCache};
use crate::LossConfig;
use afm_format::shards::Shards;
use afm_model::{ForwardArgs, Model, Precision};
use afm_tokenizer::{Tokenizer, FIRST_ROLE_TOKEN, ROLE_FIRST_AGENT};
use anyhow::{bail, Context};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// One teacher model and its id maps from the student's vocabulary.
pub struct Teacher {
    /// The agent it teaches.
    pub agent: String,
    /// Its checkpoint directory.
    pub dir: PathBuf,
    pub model: Model,
    /// Student row -> teacher row (-1: the teacher lacks the token).
    token_map: Vec<i64>,
    /// Student role id -> teacher role id (-1: the teacher lacks it).
    role_map: Vec<i64>,
    /// `[V_student]` teacher column of each student column (0 when missing).
    col_index: Tensor,
    /// `[V_student]` true where the teacher lacks the column.
    col_missing: Tensor,
    any_missing: bool,
}

/// Map each student row to the teacher's row of the same token: shared
/// tokens by id (through each side's vocabulary, which may be a corpus
/// vocabulary), agent tokens and agent roles by name.
fn build_maps(
    student: &Tokenizer,
    student_vocab: usize,
    teacher: &Tokenizer,
    teacher_vocab: usize,
) -> (Vec<i64>, Vec<i64>) {
    let mut token_map = vec![-1i64; student_vocab];
    for (row, slot) in token_map.iter_mut().enumerate() {
        let Some(id) = student.id_of_row(row as u32) else {
            continue;
        };
        let t_id = if id < FIRST_ROLE_TOKEN {
            Some(id)
        } else {
            student
                .token_agent(id)
                .and_then(|agent| teacher.role_token(agent))
        };
        if let Some(t_row) = t_id.and_then(|t| teacher.row(t)) {
            if (t_row as usize) < teacher_vocab {
                *slot = t_row as i64;
            }
        }
    }
    let n_roles = student.roles().n_roles();
    let mut role_map = vec![-1i64; n_roles];
    for (r, slot) in role_map.iter_mut().enumerate() {
        let r32 = r as u32;
        if r32 < ROLE_FIRST_AGENT {
            *slot = r as i64;
        } else if let Some(agent) = student.roles().agent_of_role(r32) {
            if let Some(t) = teacher.roles().role_id(agent) {
                *slot = t as i64;
            }
        }
    }
    (token_map, role_map)
}

impl Teacher {
    /// Load the teacher of `agent` from `dir`, frozen.
    pub fn load(
        agent: &str,
        dir: &Path,
        student: &Tokenizer,
        student_vocab: usize,
        device: Device,
    ) -> anyhow::Result<Self> {
        if student.roles().role_id(agent).is_none() {
            bail!(
                "teacher for agent {agent:?} ({}): the data has no such agent (agents: {:?})",
                dir.display(),
                student.roles().agents()
            );
        }
        let mut model = Model::load(dir, device)
            .with_context(|| format!("loading the teacher of agent {agent:?}"))?;
        model.vs.freeze();
        Ok(Self::from_model(agent, dir, model, student, student_vocab))
    }

    /// Wrap an already loaded model.
    pub fn from_model(
        agent: &str,
        dir: &Path,
        model: Model,
        student: &Tokenizer,
        student_vocab: usize,
    ) -> Self {
        let (token_map, role_map) = build_maps(
            student,
            student_vocab,
            &model.tokenizer,
            model.config.vocab_size,
        );
        let device = model.device();
        let col: Vec<i64> = token_map.iter().map(|&t| t.max(0)).collect();
        let missing: Vec<bool> = token_map.iter().map(|&t| t < 0).collect();
        let any_missing = missing.iter().any(|&m| m);
        Self {
            agent: agent.to_string(),
            dir: dir.to_path_buf(),
            col_index: Tensor::from_slice(&col).to_device(device),
            col_missing: Tensor::from_slice(&missing).to_device(device),
            any_missing,
            model,
            token_map,
            role_map,
        }
    }

    /// Teacher logits in the student's vocabulary (`[n, V_student]`, f32,
    /// no grad) at the loss positions `sel` (indices into `batch`'s
    /// selected positions).
    pub fn logits(
        &self,
        batch: &Batch,
        sel: &[usize],
        student: &Tokenizer,
        precision: Precision,
    ) -> anyhow::Result<Tensor> {
        let t = batch.row_len;
        // Rows that hold the selected positions, in first-seen order.
        let mut row_slot: HashMap<usize, usize> = HashMap::new();
        let mut rows: Vec<usize> = Vec::new();
        let mut select = Vec::with_capacity(sel.len());
        for &k in sel {
            let flat = batch.select_host[k] as usize;
            let (b, i) = (flat / t, flat % t);
            let slot = *row_slot.entry(b).or_insert_with(|| {
                rows.push(b);
                rows.len() - 1
            });
            select.push((slot * t + i) as i64);
        }
        let mut tokens = Vec::with_capacity(rows.len() * t);
        let mut roles = Vec::with_capacity(rows.len() * t);
        let mut positions = Vec::with_capacity(rows.len() * t);
        let mut docs = Vec::with_capacity(rows.len() * t);
        let use_roles = self.model.config.n_roles > 0;
        for &b in &rows {
            for i in b * t..(b + 1) * t {
                let s = batch.tokens_host[i];
                let m = self.token_map.get(s as usize).copied().unwrap_or(-1);
                if m < 0 {
                    let id = student.id_of_row(s as u32).unwrap_or(u32::MAX);
                    bail!(
                        "teacher of agent {:?} ({}) has no token {} ({:?}) that appears in its rows (data row {}): a teacher's vocabulary must cover the student's tokens",
                        self.agent,
                        self.dir.display(),
                        id,
                        student.decode(&[id]).unwrap_or_default(),
                        batch.rows[b]
                    );
                }
                tokens.push(m);
                if use_roles {
                    let r = batch.roles_host[i];
                    let mr = self.role_map.get(r as usize).copied().unwrap_or(-1);
                    if mr < 0 || mr as usize >= self.model.config.n_roles {
                        bail!(
                            "teacher of agent {:?} ({}) has no role embedding for role id {} ({}) used in its rows",
                            self.agent,
                            self.dir.display(),
                            r,
                            student.roles().agent_of_role(r as u32).unwrap_or("?")
                        );
                    }
                    roles.push(mr);
                }
                positions.push(batch.positions_host[i]);
                docs.push(batch.docs_host[i]);
            }
        }
        let device = self.model.device();
        let shape = [rows.len() as i64, t as i64];
        let mk = |v: &[i64]| Tensor::from_slice(v).view(shape).to_device(device);
        let (tok, pos, doc) = (mk(&tokens), mk(&positions), mk(&docs));
        let rol = if use_roles { Some(mk(&roles)) } else { None };
        let sel_t = Tensor::from_slice(&select).to_device(device);
        let logits = tch::no_grad(|| {
            let args = ForwardArgs {
                tokens: &tok,
                roles: rol.as_ref(),
                positions: Some(&pos),
                docs: Some(&doc),
                select: Some(&sel_t),
            };
            self.model.gpt.forward(&args, precision, false)
        });
        let mut out = logits.to_kind(Kind::Float).index_select(1, &self.col_index);
        if self.any_missing {
            out = out.masked_fill(&self.col_missing, MISSING_LOGIT);
        }
        Ok(out)
    }
}

/// The teachers of a run, indexed by the student's owner role id.
#[derive(Default)]
pub struct Teachers {
    pub list: Vec<Teacher>,
    by_role: HashMap<u16, usize>,
    /// Offline top-k logits used instead of running `list` (see
    /// [`crate::TeacherCache`]).
    pub cache: Option<TeacherCache>,
}

impl Teachers {
    /// Load every `agent -> checkpoint` of `map`.
    pub fn load(
        map: &BTreeMap<String, PathBuf>,
        student: &Tokenizer,
        student_vocab: usize,
        device: Device,
    ) -> anyhow::Result<Self> {
        let mut t = Self::default();
        for (agent, dir) in map {
            t.push(
                Teacher::load(agent, dir, student, student_vocab, device)?,
                student,
            )?;
        }
        Ok(t)
    }

    /// Add a teacher (its agent must be in the student's vocabulary).
    pub fn push(&mut self, teacher: Teacher, student: &Tokenizer) -> anyhow::Result<()> {
        let role = student
            .roles()
            .role_id(&teacher.agent)
            .with_context(|| format!("teacher for unknown agent {:?}", teacher.agent))?;
        self.by_role.insert(role as u16, self.list.len());
        self.list.push(teacher);
        Ok(())
    }

    /// Teachers replaced by their offline top-k cache.
    pub fn from_cache(cache: TeacherCache) -> Self {
        Self {
            cache: Some(cache),
            ..Self::default()
        }
    }

    /// True when there is no teacher (and no teacher cache).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty() && self.cache.is_none()
    }

    /// Index of the teacher of owner role `role`, if any.
    pub fn teacher_of(&self, role: u16) -> Option<usize> {
        self.by_role.get(&role).copied()
    }

    /// Group loss positions by teacher: `(teacher index, positions)` in
    /// teacher order; positions whose owner has no teacher are left out.
    pub fn route(&self, owners: &[u16]) -> Vec<(usize, Vec<usize>)> {
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (k, &o) in owners.iter().enumerate() {
            if let Some(ti) = self.teacher_of(o) {
                groups.entry(ti).or_default().push(k);
            }
        }
        groups.into_iter().collect()
    }
}

impl Teachers {
    /// Run every teacher over the train split `shards` and write its top-k
    /// logits (`k`, at most the student's vocabulary) into `dir`, the
    /// layout of [`crate::TeacherCache`].
    pub fn build_cache(
        &self,
        dir: &Path,
        shards: &Shards,
        student: &Tokenizer,
        k: usize,
        batch_size: usize,
        precision: Precision,
    ) -> anyhow::Result<CacheIndex> {
        let device = self
            .list
            .first()
            .map(|t| t.model.device())
            .unwrap_or(Device::Cpu);
        let k = k.min(student.n_vocab());
        let mut out = CacheWriter::create(dir, k)?;
        let plain = LossConfig::default();
        let rows: Vec<usize> = (0..shards.rows()).collect();
        for chunk in rows.chunks(batch_size.max(1)) {
            let b = make_batch(shards, chunk, &plain, student, device);
            // Per selected position: the top-k of its teacher, if routed.
            let mut per_pos: Vec<Option<(Vec<u32>, Vec<f32>)>> = vec![None; b.n_select()];
            for (ti, pos) in self.route(&b.owners) {
                let logits = self.list[ti].logits(&b, &pos, student, precision)?;
                let (vals, idx) = logits.topk(k as i64, -1, true, true);
                let vals = Vec::<f32>::try_from(vals.to_device(Device::Cpu).flatten(0, -1))?;
                let idx = Vec::<i64>::try_from(idx.to_device(Device::Cpu).flatten(0, -1))?;
                for (j, &p) in pos.iter().enumerate() {
                    let r = j * k..(j + 1) * k;
                    per_pos[p] = Some((
                        idx[r.clone()].iter().map(|&x| x as u32).collect(),
                        vals[r].to_vec(),
                    ));
                }
            }
            // Selected positions are row-major: group them by row.
            let mut by_row: Vec<Vec<(Vec<u32>, Vec<f32>)>> = vec![Vec::new(); chunk.len()];
            for (p, e) in per_pos.into_iter().enumerate() {
                if let Some(e) = e {
                    by_row[b.select_host[p] as usize / b.row_len].push(e);
                }
            }
            for row in &by_row {
                out.push_row(row)?;
            }
        }
        out.finish(
            shards.index.row_len,
            self.list.iter().map(|t| t.agent.clone()).collect(),
        )
    }
}
