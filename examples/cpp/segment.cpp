// Segment one image with a TorchScript artifact from `stdc export torchscript`.
//
//   stdc_segment MODEL.ts IMAGE.ppm LABELS.pgm [HEIGHT WIDTH]
//
// IMAGE is a binary PPM (P6, 8-bit RGB; e.g. `convert frame.png frame.ppm`), LABELS a binary
// PGM (P5) of train ids at the image's size. Pre/post-processing follows the official
// protocol: RGB / 255, ImageNet mean/std, bilinear align_corners=true resize to the network
// input (default 512x1024), logits, bilinear align_corners=true resize back, argmax. The
// artifact's metadata (stdc_metadata.json) is printed.
#include <torch/script.h>
#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

namespace F = torch::nn::functional;

static bool read_ppm(const std::string& path, int& height, int& width, std::vector<uint8_t>& rgb) {
  std::ifstream in(path, std::ios::binary);
  std::string magic;
  int max_value = 0;
  if (!(in >> magic) || magic != "P6") return false;
  auto skip_comments = [&in]() {
    in >> std::ws;
    while (in.peek() == '#') {
      std::string line;
      std::getline(in, line);
      in >> std::ws;
    }
  };
  skip_comments();
  in >> width;
  skip_comments();
  in >> height;
  skip_comments();
  in >> max_value;
  in.get();  // the single whitespace before the pixels
  if (!in || width <= 0 || height <= 0 || max_value != 255) return false;
  rgb.resize(static_cast<size_t>(width) * height * 3);
  in.read(reinterpret_cast<char*>(rgb.data()), static_cast<std::streamsize>(rgb.size()));
  return static_cast<size_t>(in.gcount()) == rgb.size();
}

int main(int argc, char** argv) {
  if (argc != 4 && argc != 6) {
    std::cerr << "usage: stdc_segment MODEL.ts IMAGE.ppm LABELS.pgm [HEIGHT WIDTH]\n";
    return 2;
  }
  const int64_t net_h = argc == 6 ? std::stoll(argv[4]) : 512;
  const int64_t net_w = argc == 6 ? std::stoll(argv[5]) : 1024;

  torch::jit::ExtraFilesMap extra{{"stdc_metadata.json", ""}};
  torch::jit::script::Module module;
  try {
    module = torch::jit::load(argv[1], torch::kCPU, extra);
  } catch (const c10::Error& e) {
    std::cerr << "error: " << argv[1] << ": cannot load the TorchScript program\n";
    return 1;
  }
  module.eval();
  std::cout << "metadata: " << extra["stdc_metadata.json"].substr(0, 120) << "...\n";

  int height = 0, width = 0;
  std::vector<uint8_t> rgb;
  if (!read_ppm(argv[2], height, width, rgb)) {
    std::cerr << "error: " << argv[2] << ": not a binary 8-bit PPM (P6) image\n";
    return 1;
  }
  torch::NoGradGuard no_grad;
  auto image = torch::from_blob(rgb.data(), {height, width, 3}, torch::kUInt8).to(torch::kFloat32).div(255.0);
  auto mean = torch::tensor({0.485f, 0.456f, 0.406f});
  auto std = torch::tensor({0.229f, 0.224f, 0.225f});
  auto x = ((image - mean) / std).permute({2, 0, 1}).unsqueeze(0).contiguous();
  x = F::interpolate(x, F::InterpolateFuncOptions().size(std::vector<int64_t>{net_h, net_w})
                            .mode(torch::kBilinear).align_corners(true));
  auto logits = module.forward({x}).toTensor();
  logits = F::interpolate(logits, F::InterpolateFuncOptions().size(std::vector<int64_t>{height, width})
                                      .mode(torch::kBilinear).align_corners(true));
  auto labels = logits.argmax(1).squeeze(0).to(torch::kUInt8).contiguous();

  std::ofstream out(argv[3], std::ios::binary);
  out << "P5\n" << width << " " << height << "\n255\n";
  out.write(reinterpret_cast<const char*>(labels.data_ptr<uint8_t>()), static_cast<std::streamsize>(labels.numel()));
  if (!out) {
    std::cerr << "error: " << argv[3] << ": cannot write\n";
    return 1;
  }
  std::cout << "labels " << width << "x" << height << " written to " << argv[3] << "\n";
  return 0;
}
