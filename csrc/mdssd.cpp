// Op schemas of the `mdssd` library, declared once. Each backend registers its kernels in its
// own file: csrc/cpu/*.cpp (CPU) and csrc/cuda/*_glue.cpp (CUDA, compiled in CUDA builds only).
// Fake (meta) kernels and autograd are registered from Python in mdssd/ops.py.
#include <Python.h>
#include <torch/library.h>

// Importing `mdssd._C` loads this shared object, which runs the registrations below; the
// module itself has no functions (ops are reached as torch.ops.mdssd.*).
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(mdssd, m) {
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
  m.def(
      "match_encode(Tensor priors, Tensor gt_boxes, Tensor gt_labels, Tensor gt_counts, "
      "float iou_threshold, float variance_xy, float variance_wh) -> (Tensor, Tensor)");
  m.def("l2norm_sum(Tensor a, Tensor b, Tensor scale_a, Tensor scale_b, float eps) -> Tensor");
  m.def(
      "l2norm_sum_backward(Tensor grad_out, Tensor a, Tensor b, Tensor scale_a, Tensor scale_b, "
      "float eps) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  m.def(
      "ssd_postprocess(Tensor loc, Tensor conf, Tensor priors, float variance_xy, "
      "float variance_wh, float score_threshold, float iou_threshold, int top_k_per_class, "
      "int keep_top_k) -> (Tensor, Tensor, Tensor, Tensor)");
}
