#include "train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>

#include "model/safetensors.h"
#include "tern/error.h"

namespace tern {

OptimizerKind parse_optimizer(const std::string& s) {
  if (s == "adamw") return OptimizerKind::AdamW;
  if (s == "sgd") return OptimizerKind::Sgd;
  fail("--optimizer: unknown optimizer '{}' (expected adamw or sgd)", s);
}

LrSchedule parse_lr_schedule(const std::string& s) {
  if (s == "constant") return LrSchedule::Constant;
  if (s == "cosine") return LrSchedule::Cosine;
  fail("--lr-schedule: unknown schedule '{}' (expected cosine or constant)", s);
}

Optimizer::Optimizer(OptimizerOptions o, std::vector<ParamRef> params) : o_(o), params_(std::move(params)) {
  for (const ParamRef& p : params_) {
    if (p.value.size() != p.grad.size()) fail("optimizer: parameter {} has {} values but {} gradients", p.name, p.value.size(), p.grad.size());
    if (o_.kind == OptimizerKind::AdamW) {
      m_.emplace_back(p.value.size(), 0.0f);
      v_.emplace_back(p.value.size(), 0.0f);
    }
  }
}

void Optimizer::step(double lr) {
  ++t_;
  if (o_.kind == OptimizerKind::Sgd) {
    const float flr = static_cast<float>(lr), wd = static_cast<float>(o_.weight_decay);
    for (const ParamRef& p : params_) {
      for (size_t i = 0; i < p.value.size(); ++i) {
        float g = p.grad[i];
        if (wd != 0.0f) g += wd * p.value[i];
        p.value[i] -= flr * g;
      }
    }
    return;
  }
  // float32 state and arithmetic like torch's single-tensor AdamW on float32 params; the
  // bias corrections are computed in double as torch does (python floats).
  const double bc1 = 1.0 - std::pow(o_.beta1, static_cast<double>(t_));
  const double bc2 = 1.0 - std::pow(o_.beta2, static_cast<double>(t_));
  // torch: exp_avg.lerp_(g, 1-b1); exp_avg_sq.mul_(b2).addcmul_(g, g, 1-b2);
  // denom = sqrt(exp_avg_sq) / sqrt(bc2) + eps; p.addcdiv_(exp_avg, denom, -lr/bc1).
  const float neg_step = static_cast<float>(-lr / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  const float w1 = static_cast<float>(1.0 - o_.beta1), b2 = static_cast<float>(o_.beta2);
  const float w2 = static_cast<float>(1.0 - o_.beta2), eps = static_cast<float>(o_.eps);
  const float decay = static_cast<float>(1.0 - lr * o_.weight_decay);
  for (size_t k = 0; k < params_.size(); ++k) {
    const ParamRef& p = params_[k];
    float* m = m_[k].data();
    float* v = v_[k].data();
    for (size_t i = 0; i < p.value.size(); ++i) {
      const float g = p.grad[i];
      if (o_.weight_decay != 0.0) p.value[i] *= decay;
      m[i] = m[i] + w1 * (g - m[i]);  // lerp with weight < 0.5
      v[i] = v[i] * b2 + w2 * g * g;
      const float denom = std::sqrt(v[i]) / bc2_sqrt + eps;
      p.value[i] = p.value[i] + neg_step * m[i] / denom;
    }
  }
}

void Optimizer::save_state(const std::string& path) const {
  st::Writer w;
  auto add = [&](const std::string& name, const std::vector<float>& x) {
    std::vector<uint8_t> bytes(x.size() * sizeof(float));
    std::memcpy(bytes.data(), x.data(), bytes.size());
    w.add(name, st::DType::F32, {static_cast<uint64_t>(x.size())}, std::move(bytes));
  };
  for (size_t k = 0; k < m_.size(); ++k) {
    add(params_[k].name + ".exp_avg", m_[k]);
    add(params_[k].name + ".exp_avg_sq", v_[k]);
  }
  w.set_metadata("step", std::to_string(t_));
  w.set_metadata("optimizer", o_.kind == OptimizerKind::AdamW ? "adamw" : "sgd");
  w.write(path);
}

void Optimizer::load_state(const std::string& path) {
  const st::Reader r = st::Reader::open_file(path);
  const auto& md = r.metadata();
  const auto kind = md.find("optimizer"), step = md.find("step");
  if (kind == md.end() || step == md.end()) fail("{}: __metadata__: missing 'optimizer' or 'step'", path);
  const std::string want = o_.kind == OptimizerKind::AdamW ? "adamw" : "sgd";
  if (kind->second != want) fail("{}: optimizer state is for '{}', not '{}'", path, kind->second, want);
  int64_t t = 0;
  try {
    t = std::stoll(step->second);
  } catch (const std::exception&) {
    fail("{}: __metadata__.step: not an integer: '{}'", path, step->second);
  }
  if (t < 0) fail("{}: __metadata__.step: negative", path);
  auto read = [&](const std::string& name, std::vector<float>& dst) {
    const st::TensorInfo& ti = r.get(name, path);
    if (ti.dtype != st::DType::F32 || ti.n_elements() != dst.size()) {
      fail("{}: tensor {}: expected F32 with {} elements", path, name, dst.size());
    }
    std::memcpy(dst.data(), ti.data, dst.size() * sizeof(float));
  };
  for (size_t k = 0; k < m_.size(); ++k) {
    read(params_[k].name + ".exp_avg", m_[k]);
    read(params_[k].name + ".exp_avg_sq", v_[k]);
  }
  t_ = t;
}

void Optimizer::export_moments(std::vector<float>& m, std::vector<float>& v) const {
  m.clear(), v.clear();
  for (size_t k = 0; k < m_.size(); ++k) {
    m.insert(m.end(), m_[k].begin(), m_[k].end());
    v.insert(v.end(), v_[k].begin(), v_[k].end());
  }
  if (m_.empty()) {  // SGD keeps no moments; the flat vectors still cover every parameter
    size_t n = 0;
    for (const ParamRef& p : params_) n += p.value.size();
    m.assign(n, 0.0f), v.assign(n, 0.0f);
  }
}

void Optimizer::import_moments(const std::vector<float>& m, const std::vector<float>& v, int64_t steps) {
  size_t off = 0;
  for (size_t k = 0; k < m_.size(); ++k) {
    if (off + m_[k].size() > m.size() || off + v_[k].size() > v.size()) fail("optimizer: imported moments are too short");
    std::copy(m.begin() + off, m.begin() + off + m_[k].size(), m_[k].begin());
    std::copy(v.begin() + off, v.begin() + off + v_[k].size(), v_[k].begin());
    off += m_[k].size();
  }
  t_ = steps;
}

double clip_grad_norm(const std::vector<ParamRef>& params, double max_norm) {
  double ss = 0;
  for (const ParamRef& p : params) {
    for (float g : p.grad) ss += static_cast<double>(g) * g;
  }
  const double norm = std::sqrt(ss);
  if (max_norm <= 0) return norm;
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) {
    const float c = static_cast<float>(coef);
    for (const ParamRef& p : params) {
      for (float& g : p.grad) g *= c;
    }
  }
  return norm;
}

double scheduled_lr(LrSchedule s, double base_lr, int64_t step, int64_t warmup_steps, int64_t total_steps) {
  if (step < warmup_steps) return base_lr * static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup_steps));
  if (s == LrSchedule::Constant) return base_lr;
  const double progress = static_cast<double>(step - warmup_steps) / static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps));
  return base_lr * std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * progress)));
}

}  // namespace tern
