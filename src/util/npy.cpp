#include "util/npy.h"

#include <cstring>
#include <regex>

#include "tern/error.h"
#include "util/atomic_file.h"

namespace tern {

void write_npy_f32(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  // Spelled as numpy spells it: (n,) and (a, b).
  std::string dims;
  int64_t n = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    dims += (i ? ", " : "") + std::to_string(shape[i]);
    n *= shape[i];
  }
  if (shape.size() == 1) dims += ",";
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  // magic(6) + version(2) + len(2) + header + '\n' padded to a multiple of 64
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  AtomicFile f(path);
  f.write("\x93NUMPY\x01\x00", 8);
  uint16_t len = static_cast<uint16_t>(header.size());
  f.write(&len, 2);
  f.write(header);
  f.write(data, static_cast<size_t>(n) * sizeof(float));
  f.commit();
}

NpyArray read_npy_f32(const std::string& path) {
  std::string s = read_text_file(path);
  if (s.size() < 10 || std::memcmp(s.data(), "\x93NUMPY", 6) != 0) fail("{}: not a .npy file", path);
  size_t hlen, off;
  if (s[6] == 1) {
    hlen = static_cast<uint8_t>(s[8]) | (static_cast<uint8_t>(s[9]) << 8);
    off = 10;
  } else {
    if (s.size() < 12) fail("{}: truncated .npy header", path);
    uint32_t l;
    std::memcpy(&l, s.data() + 8, 4);
    hlen = l;
    off = 12;
  }
  if (off + hlen > s.size()) fail("{}: truncated .npy header", path);
  std::string header = s.substr(off, hlen);
  if (header.find("'<f4'") == std::string::npos) fail("{}: dtype is not '<f4'", path);
  if (header.find("'fortran_order': False") == std::string::npos) fail("{}: fortran order not supported", path);
  std::smatch m;
  if (!std::regex_search(header, m, std::regex("'shape': \\(([0-9, ]*)\\)"))) fail("{}: no shape in header", path);
  NpyArray a;
  int64_t n = 1;
  std::string dims = m[1];
  for (size_t p = 0; p < dims.size();) {
    size_t q = dims.find(',', p);
    std::string tok = dims.substr(p, q == std::string::npos ? std::string::npos : q - p);
    if (tok.find_first_not_of(' ') != std::string::npos) {
      a.shape.push_back(std::stoll(tok));
      n *= a.shape.back();
    }
    if (q == std::string::npos) break;
    p = q + 1;
  }
  size_t data_off = off + hlen;
  if (s.size() - data_off != static_cast<size_t>(n) * 4) fail("{}: data size does not match shape", path);
  a.data.resize(n);
  std::memcpy(a.data.data(), s.data() + data_off, n * 4);
  return a;
}

}  // namespace tern
