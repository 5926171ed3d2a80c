#!/usr/bin/env python3
"""Neural Restore for GIMP 3: registers the filters under Filters > Enhance > Neural.

GIMP → this entry → hosts/gimp3.py (editor calls) → filters.py (what to do) →
client.py (engine subprocess, docs/protocol.md) → engine.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gi  # noqa: E402

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
from gi.repository import GLib, GObject, Gimp  # noqa: E402

from neural_restore import filters  # noqa: E402

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))


def _add_arguments(procedure, params):
    for param in params:
        if param.kind == "int":
            procedure.add_int_argument(param.name, param.label, param.help, param.minimum,
                                       param.maximum, param.default, GObject.ParamFlags.READWRITE)
        elif param.kind == "choice":
            choice = Gimp.Choice.new()
            for index, (value, text) in enumerate(param.choices):
                choice.add(value, index, text, "")
            procedure.add_choice_argument(param.name, param.label, param.help, choice,
                                          param.default, GObject.ParamFlags.READWRITE)
        else:
            raise ValueError("unknown parameter kind %r" % param.kind)


def _values(spec, config):
    return dict((p.name, config.get_property(p.name)) for p in spec.params)


class NeuralRestore(Gimp.PlugIn):
    def do_query_procedures(self):
        return [spec.procedure_name for spec in filters.FILTERS]

    def do_set_i18n(self, name):
        return False

    def do_create_procedure(self, name):
        spec = filters.filter_by_procedure(name)
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, self.run, None)
        procedure.set_image_types("RGB*, GRAY*")
        sensitivity = Gimp.ProcedureSensitivityMask.DRAWABLE
        if spec.second_layer_for:  # e.g. Decompose's transparency with a second shot
            sensitivity |= Gimp.ProcedureSensitivityMask.DRAWABLES
        procedure.set_sensitivity_mask(sensitivity)
        procedure.set_menu_label(spec.menu_label)
        procedure.add_menu_path(filters.MENU_PATH)
        procedure.set_documentation(spec.blurb, spec.blurb, name)
        procedure.set_attribution("Neural Restore contributors", "Neural Restore contributors", "2026")
        _add_arguments(procedure, spec.params)
        if spec.output == "new-image":  # scripts get the new image back
            procedure.add_image_return_value("image", "Image", "The new image holding the result", False,
                                             GObject.ParamFlags.READWRITE)
        return procedure

    def run(self, procedure, run_mode, image, drawables, config, run_data):
        spec = filters.filter_by_procedure(procedure.get_name())
        from neural_restore.hosts.gimp3 import Gimp3Host

        interactive = run_mode == Gimp.RunMode.INTERACTIVE
        if interactive:
            # GIMP has already loaded the last used values into config (and saves them again
            # when we return SUCCESS), so the dialog opens with the user's previous settings.
            from gi.repository import GimpUi

            GimpUi.init("neural-restore")
            dialog = GimpUi.ProcedureDialog.new(procedure, config, spec.menu_label.replace("_", "").rstrip("."))
            # Estimates are arithmetic in the engine (no torch import): a short, bounded wait;
            # if the engine cannot start the dialog still opens, saying so in the label.
            estimator = filters.DialogEstimator(Gimp3Host(image, drawables), spec, PLUGIN_DIR)
            label = dialog.get_label("estimate", estimator.text(_values(spec, config)), False, False)
            names = set(p.name for p in spec.params)

            def on_setting_changed(_config, pspec):  # e.g. Device or Iterations changed
                if pspec.name in names:
                    label.set_text(estimator.text(_values(spec, config)))

            handler = config.connect("notify", on_setting_changed)
            dialog.fill(filters.dialog_order(spec) + ["estimate"])
            try:
                accepted = dialog.run()
            finally:
                config.disconnect(handler)
                estimator.close()
                dialog.destroy()
            if not accepted:
                return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
        values = _values(spec, config)
        host = Gimp3Host(image, drawables, interactive=interactive,
                         preview_interval_s=filters.preview_interval(interactive))
        try:
            filters.run_filter(host, spec, values, PLUGIN_DIR)
        except filters.FilterError as error:
            status = (Gimp.PDBStatusType.CANCEL if error.kind == "cancelled"
                      else Gimp.PDBStatusType.EXECUTION_ERROR)
            return procedure.new_return_values(status, GLib.Error.new_literal(
                GLib.quark_from_string("neural-restore"), error.message, 0))
        if spec.output == "new-image":
            return Gimp.ValueArray.new_from_values([
                GObject.Value(Gimp.PDBStatusType, Gimp.PDBStatusType.SUCCESS),
                GObject.Value(Gimp.Image, host.opened_image)])
        return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


Gimp.main(NeuralRestore.__gtype__, sys.argv)
